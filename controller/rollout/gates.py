"""Judging one rollout window: each gate's value against its limit, from both variants' data.

Pure functions over counts and histogram buckets, so every decision can be replayed from the
numbers in the audit log.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

Buckets = list[tuple[float, float]]
"""Cumulative histogram buckets: (upper bound, observations at or below it), +Inf last."""


@dataclass(frozen=True)
class VariantWindow:
    """What one variant did during a window."""

    requests: float = 0.0
    errors: float = 0.0
    """Answers with a 5xx status."""
    latency: Buckets = field(default_factory=list)
    predictions: Buckets = field(default_factory=list)


@dataclass(frozen=True)
class Window:
    """Both variants over one interval, and the shadow comparisons made in it."""

    stable: VariantWindow
    canary: VariantWindow
    shadow_delta_sum: float = 0.0
    shadow_delta_count: float = 0.0


@dataclass(frozen=True)
class GateLimits:
    """The limits a window must keep to pass (defaults documented in the README)."""

    min_requests: int = 50
    """Canary requests a window needs to be judged at all."""
    max_error_rate: float = 0.01
    """Canary 5xx share at most this..."""
    error_significance: float = 0.05
    """...and not significantly above stable's (one-sided two-proportion z-test at this level)."""
    max_p99_ratio: float = 1.5
    """Canary p99 latency at most this multiple of stable's..."""
    p99_tolerance_s: float = 0.005
    """...unless it is within this many seconds of stable's: at a few milliseconds, two
    identical servers on a busy machine differ by more than 1.5x from window to window."""
    max_psi: float = 0.2
    """Population stability index between the two prediction histograms."""
    max_shadow_delta: float | None = None
    """Mean absolute shadow delta, when shadowing is on (None: not judged)."""


@dataclass(frozen=True)
class GateResult:
    """One gate's value, its limit, and whether it passed."""

    gate: str
    value: float | None
    limit: float
    passed: bool
    detail: str = ""


@dataclass(frozen=True)
class Verdict:
    """The window's outcome: pass, fail, or insufficient data; with every gate's numbers."""

    outcome: str
    """`pass`, `fail` or `insufficient`."""
    gates: list[GateResult]
    canary_requests: float


def judge(window: Window, limits: GateLimits) -> Verdict:
    """Judge one window; too few canary requests is `insufficient`, never a pass."""
    if window.canary.requests < limits.min_requests or window.stable.requests < 1:
        return Verdict("insufficient", [], window.canary.requests)
    gates = [
        error_gate(window, limits),
        latency_gate(window, limits),
        prediction_gate(window, limits),
    ]
    if limits.max_shadow_delta is not None and window.shadow_delta_count > 0:
        mean = window.shadow_delta_sum / window.shadow_delta_count
        gates.append(GateResult("shadow_delta", mean, limits.max_shadow_delta,
                                mean <= limits.max_shadow_delta))  # fmt: skip
    outcome = "pass" if all(gate.passed for gate in gates) else "fail"
    return Verdict(outcome, gates, window.canary.requests)


def error_gate(window: Window, limits: GateLimits) -> GateResult:
    """Canary error rate under the maximum and not significantly above stable's."""
    canary, stable = window.canary, window.stable
    rate = canary.errors / canary.requests
    p_value = one_sided_p_value(canary.errors, canary.requests, stable.errors, stable.requests)
    worse = p_value < limits.error_significance and rate > stable.errors / stable.requests
    passed = rate <= limits.max_error_rate and not worse
    detail = f"stable {stable.errors / stable.requests:.4f}, p={p_value:.4f}"
    return GateResult("error_rate", rate, limits.max_error_rate, passed, detail)


def latency_gate(window: Window, limits: GateLimits) -> GateResult:
    """Canary p99 at most a multiple of stable's (bucket bounds, as Prometheus would)."""
    canary = quantile(0.99, window.canary.latency)
    stable = quantile(0.99, window.stable.latency)
    if canary is None or stable is None or stable <= 0:
        return GateResult("p99_ratio", None, limits.max_p99_ratio, False, "no latency data")
    ratio = canary / stable
    close = canary - stable <= limits.p99_tolerance_s
    detail = f"canary p99 {canary:.4f} s, stable p99 {stable:.4f} s"
    passed = ratio <= limits.max_p99_ratio or close
    return GateResult("p99_ratio", ratio, limits.max_p99_ratio, passed, detail)


def prediction_gate(window: Window, limits: GateLimits) -> GateResult:
    """Shift between the prediction distributions: PSI over the histogram buckets."""
    value = psi(window.stable.predictions, window.canary.predictions)
    if value is None:
        return GateResult("prediction_psi", None, limits.max_psi, False, "no prediction data")
    return GateResult("prediction_psi", value, limits.max_psi, value <= limits.max_psi)


def one_sided_p_value(errors_a: float, n_a: float, errors_b: float, n_b: float) -> float:
    """P-value that A's error rate is above B's (pooled two-proportion z-test)."""
    if n_a <= 0 or n_b <= 0:
        return 1.0
    pooled = (errors_a + errors_b) / (n_a + n_b)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if spread == 0:
        return 1.0 if errors_a / n_a <= errors_b / n_b else 0.0
    z = (errors_a / n_a - errors_b / n_b) / spread
    return 0.5 * math.erfc(z / math.sqrt(2))


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


def psi(expected: Buckets, actual: Buckets, floor: float = 1e-4) -> float | None:
    """Return the population stability index of two histograms on the same bucket bounds."""
    if not expected or not actual or expected[-1][1] <= 0 or actual[-1][1] <= 0:
        return None
    if [bound for bound, _ in expected] != [bound for bound, _ in actual]:
        raise ValueError("the two histograms have different buckets")
    total = 0.0
    for shares in zip(_shares(expected), _shares(actual), strict=True):
        e, a = (max(share, floor) for share in shares)
        total += (a - e) * math.log(a / e)
    return total


def _shares(buckets: Buckets) -> list[float]:
    counts, previous = [], 0.0
    for _, cumulative in buckets:
        counts.append(cumulative - previous)
        previous = cumulative
    return [count / buckets[-1][1] for count in counts]
