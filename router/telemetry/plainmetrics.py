"""Lock-free counters and histograms for the router's hot path, exposed via prometheus_client.

prometheus_client takes a lock on every increment and walks histogram buckets one by one,
which cost the router as much CPU per request as the whole proxying did. A router process
records from one event-loop thread (the /metrics handler runs on that thread too), so plain
numbers suffice. These families register on a prometheus_client registry as collectors and
render exactly as its Counter and Histogram do (without `_created` samples).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector


class CounterChild:
    """One labelled counter: a plain float."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        """Add `amount` (one by default)."""
        self.value += amount


class HistogramChild:
    """One labelled histogram: a count per bucket (not cumulative) and the sum."""

    __slots__ = ("bounds", "counts", "le_labels", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds if bounds and bounds[-1] == math.inf else (*bounds, math.inf)
        self.le_labels = ["+Inf" if bound == math.inf else repr(bound) for bound in self.bounds]
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Record one observation in the first bucket whose bound is at least `value`."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


Child = TypeVar("Child", CounterChild, HistogramChild)


class _PlainFamily(Collector, Generic[Child]):
    """A labelled family: its name, its help text, and one child per label values."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self.children: dict[tuple[str, ...], Child] = {}
        registry.register(self)

    def labels(self, *values: str) -> Child:
        """Return (creating empty) the child of these label values."""
        child = self.children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
            child = self.children[values] = self._new_child()
        return child

    def _new_child(self) -> Child:
        raise NotImplementedError


class PlainCounter(_PlainFamily[CounterChild]):
    """A labelled counter family rendered as `<name>_total`."""

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def describe(self) -> Iterator[Metric]:
        """Name the family for the registry without samples."""
        yield CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        """Yield the family with one sample per child."""
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self.children.items()):
            family.add_metric(values, child.value)
        yield family


class PlainHistogram(_PlainFamily[HistogramChild]):
    """A labelled histogram family; bucket bounds (+Inf added) fixed, or set per child."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.bounds = tuple(sorted(float(bound) for bound in buckets))
        super().__init__(name, documentation, labelnames, registry)

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.bounds)

    def labels_with_bounds(
        self, values: tuple[str, ...], bounds: tuple[float, ...]
    ) -> HistogramChild:
        """Return the child of these labels counting in `bounds`; new bounds start it afresh.

        For histograms whose buckets are configured (the prediction buckets cut from a model):
        a reader differencing by bucket sees the old buckets end and the new ones start at 0.
        """
        child = self.labels(*values)
        if child.bounds[:-1] != bounds:
            child = self.children[values] = HistogramChild(bounds)
        return child

    def remove_other_than(self, kept: set[tuple[str, ...]]) -> None:
        """Drop the children not in `kept` (outputs no longer configured)."""
        for values in [values for values in self.children if values not in kept]:
            del self.children[values]

    def describe(self) -> Iterator[Metric]:
        """Name the family for the registry without samples."""
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        """Yield the family with cumulative buckets, sum and count per child."""
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self.children.items()):
            cumulative, buckets = 0, []
            for le, count in zip(child.le_labels, list(child.counts), strict=True):
                cumulative += count
                buckets.append((le, float(cumulative)))
            family.add_metric(list(values), buckets, child.sum)
        yield family
