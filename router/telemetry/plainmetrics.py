"""Lock-free counters, gauges and histograms for the router, added up over its processes.

prometheus_client takes a lock on every increment and walks histogram buckets one by one,
which cost the router as much CPU per request as the whole proxying did. A router process
records from one event-loop thread (the /metrics handler runs on that thread too), so a child
is a slot in this process's `ValueStore` and an increment is one store into it. One collector,
`SharedMetrics`, renders every family as prometheus_client's Counter, Gauge and Histogram do
(without `_created` samples), adding up the values of every process of the router
(`--workers`), the ones that died included: a scrape of any process sees the router's totals.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from router.telemetry.sharedvalues import Entry, ValueStore

INF = float("inf")


class CounterChild:
    """One labelled counter: a slot."""

    __slots__ = ("_slot", "_values")

    def __init__(self, values: memoryview[float], slot: int) -> None:
        self._values, self._slot = values, slot

    def inc(self, amount: float = 1.0) -> None:
        """Add `amount` (one by default)."""
        self._values[self._slot] += amount


class GaugeChild:
    """One labelled gauge: a slot this process sets."""

    __slots__ = ("_slot", "_values")

    def __init__(self, values: memoryview[float], slot: int) -> None:
        self._values, self._slot = values, slot

    def set(self, value: float) -> None:
        """Set this process's value."""
        self._values[self._slot] = value


class HistogramChild:
    """One labelled histogram: a count per bucket (not cumulative), then the sum."""

    __slots__ = ("_base", "_sum", "_values", "bounds")

    def __init__(self, values: memoryview[float], base: int, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self._values, self._base, self._sum = values, base, base + len(bounds)

    def observe(self, value: float) -> None:
        """Record one observation in the first bucket whose bound is at least `value`."""
        self._values[self._base + bisect_left(self.bounds, value)] += 1
        self._values[self._sum] += value


Child = TypeVar("Child", CounterChild, GaugeChild, HistogramChild)
Read = tuple[Entry, list[float], bool]
"""One process's child of a family: its entry, its values, whether the process runs."""


class _Family(Generic[Child]):
    """A labelled family: its name, its help text, and this process's child per label values."""

    def __init__(
        self, metrics: SharedMetrics, name: str, documentation: str, labelnames: Sequence[str]
    ) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self.store, self._shared = metrics.store, metrics
        self.children: dict[tuple[str, ...], tuple[Child, Entry]] = {}
        metrics.add(self)
        if not self.labelnames:
            self.labels()  # shown from the start, at zero, as prometheus_client does

    def labels(self, *values: str) -> Child:
        """Return (creating at zero) this process's child of these label values."""
        held = self.children.get(values)
        if held is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
            held = self.children[values] = self._new_child(values)
        return held[0]

    def _new_child(self, values: tuple[str, ...]) -> tuple[Child, Entry]:
        raise NotImplementedError

    def collect(self) -> list[Metric]:
        """Render this family alone, added up over the router's processes."""
        return [self.render(self._shared.reads()[self.name])]

    def empty(self) -> Metric:
        """Render the family without samples."""
        raise NotImplementedError

    def render(self, reads: list[Read]) -> Metric:
        """Render the family with the samples of every process's children added up."""
        raise NotImplementedError


def _by_labels(reads: list[Read]) -> dict[tuple[str, ...], list[Read]]:
    grouped: dict[tuple[str, ...], list[Read]] = defaultdict(list)
    for read in reads:
        grouped[read[0].labels].append(read)
    return grouped


class PlainCounter(_Family[CounterChild]):
    """A labelled counter family rendered as `<name>_total`: the sum over every process."""

    def _new_child(self, values: tuple[str, ...]) -> tuple[CounterChild, Entry]:
        view, slot, entry = self.store.allocate(self.name, values, 1)
        return CounterChild(view, slot), entry

    def inc(self, amount: float = 1.0) -> None:
        """Add to the family's only child (a family without labels)."""
        self.labels().inc(amount)

    def empty(self) -> Metric:  # noqa: D102 (see _Family)
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def render(self, reads: list[Read]) -> Metric:
        """Render per labels the sum over every process, those that died included."""
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, group in _by_labels(reads).items():
            family.add_metric(labels, sum(values[0] for _, values, _ in group))
        return family


Aggregation = Literal["min", "max", "sum"]
AGGREGATIONS: dict[Aggregation, Callable[[list[float]], float]] = {
    "min": min, "max": max, "sum": sum,
}  # fmt: skip


class PlainGauge(_Family[GaugeChild]):
    """A labelled gauge family: each running process's value, aggregated as `aggregation` says."""

    def __init__(
        self,
        metrics: SharedMetrics,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        aggregation: Aggregation,
    ) -> None:
        self.aggregation = aggregation
        super().__init__(metrics, name, documentation, labelnames)

    def _new_child(self, values: tuple[str, ...]) -> tuple[GaugeChild, Entry]:
        view, slot, entry = self.store.allocate(self.name, values, 1)
        return GaugeChild(view, slot), entry

    def set(self, value: float) -> None:
        """Set the family's only child (a family without labels)."""
        self.labels().set(value)

    def empty(self) -> Metric:  # noqa: D102 (see _Family)
        return GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def render(self, reads: list[Read]) -> Metric:
        """Render per labels the running processes' values, aggregated."""
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, group in _by_labels(reads).items():
            running = [values[0] for _, values, live in group if live]
            if running:
                family.add_metric(labels, AGGREGATIONS[self.aggregation](running))
        return family


class PlainHistogram(_Family[HistogramChild]):
    """A labelled histogram family; bucket bounds (+Inf added) fixed, or set per child."""

    def __init__(
        self,
        metrics: SharedMetrics,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
    ) -> None:
        self.bounds = _with_infinity(buckets)
        super().__init__(metrics, name, documentation, labelnames)

    def _new_child(
        self, values: tuple[str, ...], bounds: tuple[float, ...] | None = None
    ) -> tuple[HistogramChild, Entry]:
        bounds = self.bounds if bounds is None else bounds
        view, base, entry = self.store.allocate(self.name, values, len(bounds) + 1, bounds)
        return HistogramChild(view, base, bounds), entry

    def observe(self, value: float) -> None:
        """Record in the family's only child (a family without labels)."""
        self.labels().observe(value)

    def labels_with_bounds(
        self, values: tuple[str, ...], bounds: tuple[float, ...]
    ) -> HistogramChild:
        """Return the child of these labels counting in `bounds`; new bounds start it afresh.

        For histograms whose buckets are configured (the prediction buckets cut from a model):
        a reader differencing by bucket sees the old buckets end and the new ones start at 0.
        """
        bounds = _with_infinity(bounds)
        held = self.children.get(values)
        if held is None or held[0].bounds != bounds:
            if held is not None:
                self.store.retire(held[1])
            held = self.children[values] = self._new_child(values, bounds)
        return held[0]

    def remove_other_than(self, kept: set[tuple[str, ...]]) -> None:
        """Drop the children not in `kept` (outputs no longer configured)."""
        for values in [values for values in self.children if values not in kept]:
            self.store.retire(self.children.pop(values)[1])

    def empty(self) -> Metric:  # noqa: D102 (see _Family)
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def render(self, reads: list[Read]) -> Metric:
        """Render per labels the buckets of the first running process's bounds.

        That is this process's when it has the child, summed over every process that counted
        in the same bounds (the others' counts belonged to buckets no longer cut).
        """
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, group in _by_labels(reads).items():
            bounds = next((entry.bounds for entry, _, live in group if live), group[0][0].bounds)
            counts = [0.0] * (len(bounds) + 1)
            for entry, values, _ in group:
                if entry.bounds == bounds:
                    counts = [total + value for total, value in zip(counts, values, strict=True)]
            cumulative, buckets = 0.0, []
            for bound, count in zip(bounds, counts, strict=False):
                cumulative += count
                buckets.append(("+Inf" if bound == INF else repr(bound), cumulative))
            family.add_metric(list(labels), buckets, counts[-1])
        return family


def _with_infinity(buckets: Sequence[float]) -> tuple[float, ...]:
    bounds = tuple(sorted(float(bound) for bound in buckets))
    return bounds if bounds and bounds[-1] == INF else (*bounds, INF)


@dataclass(eq=False)
class SharedMetrics(Collector):
    """The families of one router process, collected as the sum over all of its processes."""

    store: ValueStore

    def __post_init__(self) -> None:
        self.families: dict[str, _Family[Any]] = {}

    def add(self, family: _Family[Child]) -> None:
        """Declare a family (its name must be new)."""
        if family.name in self.families:
            raise ValueError(f"metric family {family.name} declared twice")
        self.families[family.name] = family

    def register(self, registry: CollectorRegistry) -> None:
        """Expose the families declared so far on `registry` (which refuses names it has)."""
        registry.register(self)

    def describe(self) -> Iterator[Metric]:
        """Name every family for the registry, without samples."""
        for family in self.families.values():
            yield family.empty()

    def reads(self) -> dict[str, list[Read]]:
        """Every process's children, by family."""
        reads: dict[str, list[Read]] = defaultdict(list)
        for instance in self.store.read():
            for entry in instance.entries:
                reads[entry.family].append((entry, instance.values(entry), instance.live))
        return reads

    def collect(self) -> Iterator[Metric]:
        """Render every family, added up over the router's processes."""
        reads = self.reads()
        for family in self.families.values():
            yield family.render(reads[family.name])
