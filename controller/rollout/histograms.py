"""Histogram arithmetic the gates use: cumulative buckets, categories, quantiles, PSI.

Pure functions over counts; nothing here knows about variants or rollouts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from controller.rollout.judgement import Buckets, Categories

SMOOTHING = 0.5
"""Added to every category's count in the PSI (Jeffreys): an empty bucket in a small sample
is not a shift."""


def _quantile_of(values: list[float], q: float) -> float:
    ordered_values = sorted(values)
    return ordered_values[min(int(q * len(ordered_values)), len(ordered_values) - 1)]


def ordered(categories: Iterable[str]) -> list[str]:
    """Buckets by their bound (`+Inf` last), then class labels in text order."""

    def key(category: str) -> tuple[int, float, str]:
        try:
            return (0, float(category), "")
        except ValueError:
            return (1, 0.0, category)

    return sorted(categories, key=key)


def categories_of(buckets: Buckets) -> Categories:
    """Turn cumulative histogram buckets into per-bucket counts, named by upper bound."""
    counts: Categories = {}
    previous = 0.0
    for bound, cumulative in buckets:
        counts["+Inf" if math.isinf(bound) else repr(bound)] = max(cumulative - previous, 0.0)
        previous = cumulative
    return counts


def sorted_buckets(counts: dict[float, float]) -> Buckets:
    """Order cumulative counts keyed by upper bound into buckets, +Inf last."""
    return sorted(counts.items(), key=lambda pair: (math.isinf(pair[0]), pair[0]))


def buckets_of(categories: Categories) -> Buckets:
    """Turn per-bucket counts named by upper bound back into cumulative buckets."""
    running, buckets = 0.0, []
    for name in ordered(categories):
        running += categories[name]
        buckets.append((math.inf if name == "+Inf" else float(name), running))
    return buckets


def psi(expected: Categories, actual: Categories) -> float | None:
    """Return the population stability index of two count tables (smoothed), or None."""
    names = expected.keys() | actual.keys()
    total_e, total_a = sum(expected.values()), sum(actual.values())
    if total_e <= 0 or total_a <= 0:
        return None
    smoothed = SMOOTHING * len(names)
    value = 0.0
    for name in names:
        e = (expected.get(name, 0.0) + SMOOTHING) / (total_e + smoothed)
        a = (actual.get(name, 0.0) + SMOOTHING) / (total_a + smoothed)
        value += (a - e) * math.log(a / e)
    return value


def quantile(q: float, buckets: Buckets) -> float | None:
    """Return the q-quantile of cumulative buckets, interpolated in a bucket (as PromQL does)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def _total(buckets: Buckets) -> float:
    return buckets[-1][1] if buckets else 0.0


def _above(buckets: Buckets, bound: float) -> float:
    """Observations above `bound` (one of the buckets' bounds)."""
    at_or_below = next((count for b, count in buckets if b == bound), _total(buckets))
    return max(_total(buckets) - at_or_below, 0.0)


def upper_bound(events: float, total: float, alpha: float) -> float:
    """Return the Clopper-Pearson upper bound of a rate: above the true one but for `alpha`."""
    from scipy.stats import beta

    if total <= 0 or events >= total:
        return 1.0
    return float(beta.ppf(1 - alpha, events + 1, total - events))


def _share(canary: float, stable: float) -> float:
    return canary / (canary + stable) if canary + stable > 0 else 0.0


def _ratio(canary: float, stable: float) -> float | None:
    """Return canary / stable; None when stable's is 0 (the detail says both)."""
    return canary / stable if stable > 0 else None
