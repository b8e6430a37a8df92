"""A rollout window's data from the routers' /metrics: differenced per router process, summed.

Each router names itself in its exposition (`mlcanary_router_instance_info`), and its counters
are differenced against its own earlier reading before the routers are summed, as PromQL's
`sum(increase(...))` does: a router that restarted mid-window (a new name) counts from zero,
and the others' counts are not pulled down by its reset. The same router read twice (two
addresses for one router) counts once. A router run with `--workers N` answers for all its
processes from any of them (`router.telemetry.plainmetrics`): one read of its address suffices.

A router that cannot be read makes the snapshot fail (the caller counts a failed check): a
window is never judged on part of the traffic.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from contracts.metrics import (
    PREDICTION_CLASS,
    PREDICTION_VALUE,
    REQUEST_DURATION,
    REQUESTS,
    ROUTER_INSTANCE_SAMPLE,
    SHADOW_DELTA,
    SINGLE_OUTPUT,
)
from controller.errors import ControllerError
from controller.rollout.histograms import categories_of, sorted_buckets
from controller.rollout.judgement import Buckets, VariantWindow, Window

VARIANTS = ("stable", "canary")
K = TypeVar("K")


@dataclass
class VariantTotals:
    """Counters since the routers started, for one variant."""

    requests: float = 0.0
    errors: float = 0.0
    latency: dict[float, float] = field(default_factory=lambda: defaultdict(float))
    latency_by_version: dict[str, dict[float, float]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(float))
    )
    """The same buckets per version: a rollout's baseline is stable's version's history."""
    predictions: dict[str, dict[float, float]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(float))
    )
    """Per output: cumulative histogram buckets of numeric predictions."""
    classes: dict[str, dict[str, float]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(float))
    )
    """Per output: predictions counted by class label."""


@dataclass
class Counts:
    """One router process's counters since it started."""

    variants: dict[str, VariantTotals] = field(
        default_factory=lambda: {variant: VariantTotals() for variant in VARIANTS}
    )
    shadow_delta_sum: float = 0.0
    shadow_delta_count: float = 0.0


@dataclass
class Snapshot:
    """Every router process's counters, by the process's instance id."""

    instances: dict[str, Counts] = field(default_factory=dict)


def add_exposition(snapshot: Snapshot, text: str, source: str = "") -> str:
    """Add one router's /metrics text to the snapshot, under the router's instance id.

    Return that id. A text that names no instance is keyed by `source`, its address.
    """
    counts, instance = Counts(), source
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            variant = sample.labels.get("variant")
            totals = counts.variants.get(variant) if variant else None
            if sample.name == REQUESTS.total and totals is not None:
                totals.requests += sample.value
                if sample.labels.get("code", "").startswith("5"):
                    totals.errors += sample.value
            elif sample.name == REQUEST_DURATION.bucket and totals is not None:
                le = float(sample.labels["le"])
                totals.latency[le] += sample.value
                totals.latency_by_version[sample.labels.get("version", "")][le] += sample.value
            elif sample.name == PREDICTION_VALUE.bucket and totals is not None:
                output = sample.labels.get("output", SINGLE_OUTPUT)
                totals.predictions[output][float(sample.labels["le"])] += sample.value
            elif sample.name == PREDICTION_CLASS.total and totals is not None:
                output = sample.labels.get("output", SINGLE_OUTPUT)
                totals.classes[output][sample.labels.get("class", "")] += sample.value
            elif sample.name == SHADOW_DELTA.sum:
                counts.shadow_delta_sum += sample.value
            elif sample.name == SHADOW_DELTA.count:
                counts.shadow_delta_count += sample.value
            elif sample.name == ROUTER_INSTANCE_SAMPLE:
                instance = sample.labels.get("instance_id") or source
    snapshot.instances[instance] = counts
    return instance


def latency_since_start(snapshot: Snapshot, variant: str, version: str) -> Buckets:
    """Return the latency buckets of `variant` at `version` since each router started."""
    total: dict[float, float] = defaultdict(float)
    for counts in snapshot.instances.values():
        for bound, value in counts.variants[variant].latency_by_version.get(version, {}).items():
            total[bound] += value
    return sorted_buckets(total)


async def take_snapshot(session: aiohttp.ClientSession, routers: list[str]) -> Snapshot:
    """Read every router's /metrics; ControllerError if any cannot be read."""
    if not routers:
        raise ControllerError("no router to read metrics from")
    snapshot = Snapshot()
    texts = await asyncio.gather(*(_read(session, router) for router in routers))
    for router, text in zip(routers, texts, strict=True):
        try:
            add_exposition(snapshot, text, router)
        except ValueError as error:
            raise ControllerError(f"{router}/metrics cannot be parsed: {error}") from None
    return snapshot


async def _read(session: aiohttp.ClientSession, router: str) -> str:
    """Read one router's /metrics."""
    try:
        timeout = aiohttp.ClientTimeout(total=5)
        async with session.get(f"{router}/metrics", timeout=timeout) as answer:
            if answer.status != 200:
                raise ControllerError(f"{router}/metrics answered {answer.status}")
            return await answer.text()
    except (aiohttp.ClientError, TimeoutError) as error:
        reason = str(error) or type(error).__name__
        raise ControllerError(f"{router}/metrics cannot be read: {reason}") from None


def window_between(before: Snapshot, after: Snapshot) -> Window:
    """Return the traffic between two snapshots: each process's increase, summed.

    A process first seen in `after` started in the window (a restart): all its counts are new.
    One seen only in `before` stopped: what it did after `before` is lost, as in PromQL.
    """
    increases = [
        _increase(before.instances.get(instance, Counts()), counts)
        for instance, counts in after.instances.items()
    ]
    return Window(
        stable=_summed([increase.variants["stable"] for increase in increases]),
        canary=_summed([increase.variants["canary"] for increase in increases]),
        shadow_delta_sum=sum(increase.shadow_delta_sum for increase in increases),
        shadow_delta_count=sum(increase.shadow_delta_count for increase in increases),
    )


def _increase(before: Counts, after: Counts) -> Counts:
    """One process's counts between two readings (a counter that went down restarted)."""
    increase = Counts(
        shadow_delta_sum=_delta(before.shadow_delta_sum, after.shadow_delta_sum),
        shadow_delta_count=_delta(before.shadow_delta_count, after.shadow_delta_count),
    )
    for variant in VARIANTS:
        old, new, into = (
            before.variants[variant],
            after.variants[variant],
            increase.variants[variant],
        )
        into.requests = _delta(old.requests, new.requests)
        into.errors = _delta(old.errors, new.errors)
        _increase_of(old.latency, new.latency, into.latency)
        for output, buckets in new.predictions.items():
            _increase_of(old.predictions.get(output, {}), buckets, into.predictions[output])
        for output, classes in new.classes.items():
            _increase_of(old.classes.get(output, {}), classes, into.classes[output])
    return increase


def _increase_of(old: Mapping[K, float], new: Mapping[K, float], into: dict[K, float]) -> None:
    for key, value in new.items():
        into[key] = _delta(old.get(key, 0.0), value)


def _summed(increases: list[VariantTotals]) -> VariantWindow:
    """Add up the processes' increases of one variant."""
    total = VariantTotals()
    for increase in increases:
        total.requests += increase.requests
        total.errors += increase.errors
        for bound, value in increase.latency.items():
            total.latency[bound] += value
        for output, buckets in increase.predictions.items():
            for bound, value in buckets.items():
                total.predictions[output][bound] += value
        for output, classes in increase.classes.items():
            for label, value in classes.items():
                total.classes[output][label] += value
    predictions = {output: categories_of(sorted_buckets(buckets))
                   for output, buckets in total.predictions.items()}  # fmt: skip
    predictions.update((output, dict(classes)) for output, classes in total.classes.items())
    return VariantWindow(
        requests=total.requests,
        errors=total.errors,
        latency=sorted_buckets(total.latency),
        predictions={output: counts for output, counts in predictions.items() if counts},
    )


def _delta(before: float, after: float) -> float:
    return after - before if after >= before else after
