"""`mlcanary rollout plan`: what a rollout plan can find at the traffic the routers see now.

The traffic is measured (a short window, as a rollout reads one), then the plan is simulated
(`simulate.py`, the real gates and step rules) for each fault of the design's targets, with
stable's measured 5xx share and latency. For each fault the report says how often it would be
caught before 50% weight, and, where that is short of `POWER`, the window each step would need.
Per step it says how many canary requests a window gets and how long `--min-requests` takes,
warning where a window cannot collect them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from contracts.payloads import PredictionsProfile
from controller.rollout.histograms import quantile
from controller.rollout.judgement import Window
from controller.rollout.simulate import (
    Behaviour,
    Scenario,
    Shape,
    Traffic,
    scenarios,
    simulate,
    summarize,
)

POWER = 0.9
"""Share of faulty rollouts the plan should catch before 50% weight."""
ROLLOUTS = 200
"""Simulated rollouts per scenario and interval (a planner answers in seconds, not minutes)."""
LONGEST_INTERVAL_S = 3600.0


@dataclass(frozen=True)
class StepPlan:
    """One step: its weight, the canary requests of a window, the time `min_requests` takes."""

    weight: float
    canary_requests_per_window: float
    seconds_to_min_requests: float | None
    """None: the canary gets no traffic at all."""


@dataclass(frozen=True)
class Detection:
    """One fault: how often the plan catches it before 50%, and the interval that would."""

    fault: str
    before_half: float
    median_canary_requests: float | None
    interval_needed_s: float | None
    """The shortest doubling of the interval reaching `POWER`; None if none up to an hour."""


@dataclass(frozen=True)
class PlanReport:
    """The traffic measured, each step, each fault, and what to change."""

    requests_per_s: float
    canary_share: float
    stable_error_rate: float
    stable_p99_s: float | None
    prediction_shape: str
    """What the simulated predictions were drawn from: stable's deciles, or a normal."""
    steps: list[StepPlan]
    detections: list[Detection]
    false_rollbacks: float
    """Share of identical twins rolled back by a gate in the simulation."""
    warnings: list[str] = field(default_factory=list)


def plan_report(
    measured: Window, seconds: float, traffic: Traffic, deciles: tuple[float, ...] = ()
) -> PlanReport:
    """Report what `traffic`'s plan finds at the rate and stable behaviour of `measured`.

    `deciles`: stable's predictions as its routers profiled them (`stable_deciles`): the
    numeric models are simulated with that shape, and their faults moved by the same share of
    its spread; without them, with a normal.
    """
    stable, canary = measured.stable, measured.canary
    total = stable.requests + canary.requests
    rate = total / seconds if seconds > 0 else 0.0
    error_rate = stable.errors / stable.requests if stable.requests else 0.001
    median = quantile(0.5, stable.latency)
    p99 = quantile(0.99, stable.latency)
    baseline = Behaviour(error_rate=max(error_rate, 1e-4))
    if median and p99 and p99 > median:
        baseline = replace(baseline, latency_median_s=median, latency_p99_s=p99)
    traffic = replace(traffic, requests_per_s=rate)
    warnings: list[str] = []
    steps = []
    for weight in traffic.steps:
        per_s = rate * weight / 100
        window = per_s * traffic.interval_s
        needed = traffic.limits.min_requests / per_s if per_s > 0 else None
        steps.append(StepPlan(weight, window, needed))
        if window < traffic.limits.min_requests:
            warnings.append(
                f"step {weight:g}%: a {traffic.interval_s:g} s window gets about {window:.0f}"
                f" canary requests, under --min-requests {traffic.limits.min_requests}: it"
                " holds, and rolls back after --max-insufficient windows"
            )
    detections, twins = [], []
    for scenario in scenarios():
        if scenario.min_labels > 0:
            continue  # the plan reads request traffic; how many labels come back it cannot
        scenario = replace(
            scenario,
            stable=_shaped(_on(baseline, scenario.stable), scenario.stable, deciles),
            canary=_shaped(_on(baseline, scenario.canary, scenario.stable), scenario.stable,
                           deciles),
        )  # fmt: skip
        summary = summarize(simulate(scenario, traffic, ROLLOUTS))
        if not scenario.faulty:
            twins.append(summary.by_gates)
            continue
        interval = None if summary.before_half >= POWER else _interval_needed(scenario, traffic)
        detections.append(Detection(scenario.name, summary.before_half,
                                    summary.median_requests, interval))  # fmt: skip
        if summary.before_half < POWER:
            where = f"--interval {interval:g}s" if interval else "more traffic than an hour's"
            warnings.append(
                f"{scenario.name}: caught before 50% in {summary.before_half:.0%} of simulated"
                f" rollouts; {POWER:.0%} needs {where} at this traffic"
            )
    return PlanReport(
        requests_per_s=rate,
        canary_share=canary.requests / total if total else 0.0,
        stable_error_rate=error_rate,
        stable_p99_s=p99,
        prediction_shape="stable's deciles" if deciles else "normal",
        steps=steps,
        detections=detections,
        false_rollbacks=max(twins, default=0.0),
        warnings=warnings,
    )


def _on(baseline: Behaviour, behaviour: Behaviour, stable: Behaviour | None = None) -> Behaviour:
    """Put a scenario's behaviour on the measured baseline (a fault keeps its own change)."""
    faulty_errors = stable is not None and behaviour.error_rate != stable.error_rate
    return replace(
        behaviour,
        error_rate=behaviour.error_rate if faulty_errors else baseline.error_rate,
        latency_median_s=baseline.latency_median_s,
        latency_p99_s=baseline.latency_p99_s,
    )


def _shaped(behaviour: Behaviour, stable: Behaviour, deciles: tuple[float, ...]) -> Behaviour:
    """Give a numeric behaviour stable's live shape, its shift kept in units of the spread."""
    if not deciles or behaviour.prediction_mean is None or stable.prediction_mean is None:
        return behaviour
    shape = Shape.of(deciles)
    shift = (behaviour.prediction_mean - stable.prediction_mean) / stable.prediction_sd
    return replace(
        behaviour, prediction_deciles=deciles, prediction_mean=shape.mean + shift * shape.sd,
        prediction_sd=shape.sd,
    )  # fmt: skip


def stable_deciles(profiles: list[PredictionsProfile], version: str) -> tuple[float, ...]:
    """Return the deciles of stable's numeric output with most rows, or () if none has."""
    numeric = [
        output for profile in profiles if profile.stable_version == version
        for output in profile.outputs.values() if output.numeric and len(output.deciles) == 9
    ]  # fmt: skip
    if not numeric:
        return ()
    return tuple(max(numeric, key=lambda output: output.rows).deciles)


def _interval_needed(scenario: Scenario, traffic: Traffic) -> float | None:
    """Double the interval until the fault is caught before 50% in `POWER` of rollouts."""
    interval = traffic.interval_s
    while interval < LONGEST_INTERVAL_S:
        interval = min(interval * 2, LONGEST_INTERVAL_S)
        longer = replace(traffic, interval_s=interval)
        if summarize(simulate(scenario, longer, ROLLOUTS)).before_half >= POWER:
            return math.ceil(interval)
    return None
