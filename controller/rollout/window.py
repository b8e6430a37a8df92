"""A rollout window's data from the routers' /metrics: snapshots summed over routers, differenced.

A router that cannot be read makes the snapshot fail (the caller counts a failed check): a
window is never judged on part of the traffic.
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from dataclasses import dataclass, field

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from controller.errors import ControllerError
from controller.rollout.gates import Buckets, VariantWindow, Window

VARIANTS = ("stable", "canary")


@dataclass
class VariantTotals:
    """Counters since the routers started, for one variant."""

    requests: float = 0.0
    errors: float = 0.0
    latency: dict[float, float] = field(default_factory=lambda: defaultdict(float))
    predictions: dict[float, float] = field(default_factory=lambda: defaultdict(float))


@dataclass
class Snapshot:
    """Every router's counters, summed."""

    variants: dict[str, VariantTotals] = field(
        default_factory=lambda: {variant: VariantTotals() for variant in VARIANTS}
    )
    shadow_delta_sum: float = 0.0
    shadow_delta_count: float = 0.0


def add_exposition(snapshot: Snapshot, text: str) -> None:
    """Add one router's /metrics text to the snapshot."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            variant = sample.labels.get("variant")
            totals = snapshot.variants.get(variant) if variant else None
            if sample.name == "mlcanary_requests_total" and totals is not None:
                totals.requests += sample.value
                if sample.labels.get("code", "").startswith("5"):
                    totals.errors += sample.value
            elif sample.name == "mlcanary_request_duration_seconds_bucket" and totals is not None:
                totals.latency[float(sample.labels["le"])] += sample.value
            elif sample.name == "mlcanary_prediction_value_bucket" and totals is not None:
                totals.predictions[float(sample.labels["le"])] += sample.value
            elif sample.name == "mlcanary_shadow_prediction_delta_sum":
                snapshot.shadow_delta_sum += sample.value
            elif sample.name == "mlcanary_shadow_prediction_delta_count":
                snapshot.shadow_delta_count += sample.value


async def take_snapshot(session: aiohttp.ClientSession, routers: list[str]) -> Snapshot:
    """Read every router's /metrics; ControllerError if any cannot be read."""
    if not routers:
        raise ControllerError("no router to read metrics from")

    async def read(router: str) -> str:
        try:
            timeout = aiohttp.ClientTimeout(total=5)
            async with session.get(f"{router}/metrics", timeout=timeout) as answer:
                if answer.status != 200:
                    raise ControllerError(f"{router}/metrics answered {answer.status}")
                return await answer.text()
        except (aiohttp.ClientError, TimeoutError) as error:
            reason = str(error) or type(error).__name__
            raise ControllerError(f"{router}/metrics cannot be read: {reason}") from None

    snapshot = Snapshot()
    for text in await asyncio.gather(*(read(router) for router in routers)):
        try:
            add_exposition(snapshot, text)
        except ValueError as error:
            raise ControllerError(f"a router's /metrics cannot be parsed: {error}") from None
    return snapshot


def window_between(before: Snapshot, after: Snapshot) -> Window:
    """Return the traffic between two snapshots (a counter that went down restarted: all new)."""
    variants = {
        variant: _variant_window(before.variants[variant], after.variants[variant])
        for variant in VARIANTS
    }
    return Window(
        stable=variants["stable"],
        canary=variants["canary"],
        shadow_delta_sum=_delta(before.shadow_delta_sum, after.shadow_delta_sum),
        shadow_delta_count=_delta(before.shadow_delta_count, after.shadow_delta_count),
    )


def _variant_window(before: VariantTotals, after: VariantTotals) -> VariantWindow:
    return VariantWindow(
        requests=_delta(before.requests, after.requests),
        errors=_delta(before.errors, after.errors),
        latency=_buckets(before.latency, after.latency),
        predictions=_buckets(before.predictions, after.predictions),
    )


def _buckets(before: dict[float, float], after: dict[float, float]) -> Buckets:
    bounds = sorted(after, key=lambda bound: (math.isinf(bound), bound))
    return [(bound, _delta(before.get(bound, 0.0), after[bound])) for bound in bounds]


def _delta(before: float, after: float) -> float:
    return after - before if after >= before else after
