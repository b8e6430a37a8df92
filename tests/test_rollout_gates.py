"""The rollout gates on known numbers: error test, p99 from buckets, PSI, insufficient data."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Histogram

from controller.rollout.gates import (
    Buckets,
    GateLimits,
    VariantWindow,
    Window,
    judge,
    one_sided_p_value,
    psi,
    quantile,
)

LATENCY_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, math.inf)
PREDICTION_BOUNDS = (*(float(edge) for edge in range(0, 101, 5)), math.inf)


def buckets_of(values: list[float], bounds: tuple[float, ...] = LATENCY_BOUNDS) -> Buckets:
    """Cumulative buckets as a Prometheus histogram would expose them."""
    return [(bound, float(sum(value <= bound for value in values))) for bound in bounds]


def variant(requests: int, errors: int, latency: float, prediction: float) -> VariantWindow:
    predictions = [prediction + (i % 10) for i in range(requests)]
    return VariantWindow(
        requests=requests,
        errors=errors,
        latency=buckets_of([latency] * requests),
        predictions=buckets_of(predictions, PREDICTION_BOUNDS),
    )


def test_a_healthy_canary_passes_every_gate() -> None:
    verdict = judge(Window(variant(900, 1, 0.004, 30), variant(100, 0, 0.004, 30)), GateLimits())
    assert verdict.outcome == "pass"
    assert {gate.gate for gate in verdict.gates} == {"error_rate", "p99_ratio", "prediction_psi"}
    assert all(gate.passed for gate in verdict.gates)


def test_five_percent_errors_fail_the_error_gate() -> None:
    verdict = judge(Window(variant(900, 0, 0.004, 30), variant(100, 5, 0.004, 30)), GateLimits())
    assert verdict.outcome == "fail"
    (errors,) = [gate for gate in verdict.gates if gate.gate == "error_rate"]
    assert not errors.passed and errors.value == pytest.approx(0.05)


def test_an_error_rate_under_the_maximum_but_significantly_worse_fails() -> None:
    limits = GateLimits(max_error_rate=0.05)
    stable, canary = variant(10_000, 0, 0.004, 30), variant(2_000, 40, 0.004, 30)
    (errors,) = [g for g in judge(Window(stable, canary), limits).gates if g.gate == "error_rate"]
    assert errors.value == pytest.approx(0.02) and not errors.passed  # 2% < 5%, yet worse


def test_a_raw_difference_without_significance_passes() -> None:
    limits = GateLimits(max_error_rate=0.05)
    stable, canary = variant(100, 1, 0.004, 30), variant(50, 1, 0.004, 30)
    assert one_sided_p_value(1, 50, 1, 100) > 0.05
    assert judge(Window(stable, canary), limits).outcome == "pass"


def test_a_canary_three_times_slower_fails_on_latency() -> None:
    verdict = judge(Window(variant(900, 0, 0.004, 30), variant(100, 0, 0.012, 30)), GateLimits())
    (latency,) = [gate for gate in verdict.gates if gate.gate == "p99_ratio"]
    assert verdict.outcome == "fail" and not latency.passed and latency.value is not None
    assert latency.value > 1.5


def test_shifted_predictions_fail_on_psi() -> None:
    verdict = judge(Window(variant(900, 0, 0.004, 30), variant(100, 0, 0.004, 45)), GateLimits())
    (shift,) = [gate for gate in verdict.gates if gate.gate == "prediction_psi"]
    assert verdict.outcome == "fail" and not shift.passed


def test_too_little_canary_traffic_is_insufficient_never_a_pass() -> None:
    verdict = judge(Window(variant(900, 0, 0.004, 30), variant(49, 0, 0.004, 30)), GateLimits())
    assert verdict.outcome == "insufficient" and verdict.gates == []


def test_the_quantile_matches_prometheus_client_histograms() -> None:
    registry = CollectorRegistry()
    histogram = Histogram("h", "h", buckets=LATENCY_BOUNDS[:-1], registry=registry)
    values = [0.0005] * 50 + [0.003] * 40 + [0.02] * 10
    for value in values:
        histogram.observe(value)
    exposed = [
        (float(sample.labels["le"]), sample.value)
        for sample in registry.collect().__next__().samples
        if sample.name == "h_bucket"
    ]
    assert exposed == buckets_of(values)
    assert quantile(0.5, exposed) == pytest.approx(0.001)
    assert quantile(0.99, exposed) == pytest.approx(0.01 + 0.015 * 0.9)
    assert quantile(0.99, []) is None


def test_psi_is_zero_for_equal_shapes_and_refuses_different_buckets() -> None:
    same = buckets_of([1.0, 2.0, 3.0], (1.0, 2.0, math.inf))
    doubled = [(bound, 2 * count) for bound, count in same]
    assert psi(same, doubled) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="different buckets"):
        psi(same, buckets_of([1.0], (5.0, math.inf)))


def test_a_p99_within_the_tolerance_passes_whatever_the_ratio() -> None:
    stable, canary = variant(900, 0, 0.001, 30), variant(100, 0, 0.003, 30)
    (lenient,) = [
        g for g in judge(Window(stable, canary), GateLimits()).gates if g.gate == "p99_ratio"
    ]
    assert lenient.value is not None and lenient.value > 1.5 and lenient.passed
    strict = GateLimits(p99_tolerance_s=0.0)
    (exact,) = [g for g in judge(Window(stable, canary), strict).gates if g.gate == "p99_ratio"]
    assert not exact.passed
