"""What one request's metrics cost: a counter increment and a latency observation.

Three implementations, timed alike in one run (`timeit`, best of `--repeat`):
- `shared`: the router's (`router.telemetry.plainmetrics`), a slot in a memory-mapped file that
  every `--workers` process reads (here in a temporary folder, as with `--workers 2`);
- `plain`: the attribute-per-child counters the router had before its workers' metrics were
  shared (a float on an object; copied here as the reference);
- `prometheus_client`: its Counter and Histogram (a lock per increment).

    .venv/bin/python bench/metrics_cost.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import timeit
from bisect import bisect_left
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import CollectorRegistry, Counter, Histogram

from contracts.metrics import LATENCY_BUCKETS
from router.telemetry.plainmetrics import PlainCounter, PlainHistogram, SharedMetrics
from router.telemetry.sharedvalues import ValueStore


class _PlainCounter:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class _PlainHistogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = (*bounds, float("inf"))
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--number", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        shared = SharedMetrics(ValueStore(Path(folder)))
        cases = {
            "shared": (
                PlainCounter(shared, "c", "doc", ["variant"]).labels("stable"),
                PlainHistogram(shared, "h", "doc", ["variant"], LATENCY_BUCKETS).labels("stable"),
            ),
            "plain": (_PlainCounter(), _PlainHistogram(LATENCY_BUCKETS)),
            "prometheus_client": (
                Counter("c", "doc", ["variant"], registry=CollectorRegistry()).labels("stable"),
                Histogram(
                    "h", "doc", ["variant"], buckets=LATENCY_BUCKETS, registry=CollectorRegistry()
                ).labels("stable"),
            ),
        }
        print(f"best of {arguments.repeat} runs of {arguments.number:,} calls, ns per call")
        print("| implementation | counter inc | histogram observe | both | vs plain |")
        print("|---|---|---|---|---|")
        reference = 0.0
        for name in ("plain", "shared", "prometheus_client"):
            counter, histogram = cases[name]
            inc = _best(lambda counter=counter: counter.inc(), arguments)
            observe = _best(lambda histogram=histogram: histogram.observe(0.0123), arguments)
            both = inc + observe
            reference = reference or both
            print(f"| {name} | {inc:.0f} | {observe:.0f} | {both:.0f} | {both / reference:.2f}x |")


def _best(call: Callable[[], object], arguments: argparse.Namespace) -> float:
    timings = timeit.repeat(call, number=arguments.number, repeat=arguments.repeat)
    return min(timings) / arguments.number * 1e9


if __name__ == "__main__":
    main()
