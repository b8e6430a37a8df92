"""Rollouts over synthetic traffic, judged and decided by the real gates and step rules.

What `bench/judge.py` measures the judge's error rates with, and what `mlcanary rollout plan`
runs at the traffic it reads. A scenario says how each variant answers (5xx share, latency,
predictions); each window draws the requests the router would have split at the step's weight,
builds the histograms the routers would have exposed (their latency buckets, prediction
buckets at the stable version's deciles), and hands them to `gates.judge` and `steps.decide`.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np

from contracts.metrics import LATENCY_BUCKETS
from controller.rollout.evidence import RolloutEvidence
from controller.rollout.gates import judge
from controller.rollout.histograms import categories_of
from controller.rollout.judgement import (
    Buckets,
    Categories,
    GateLimits,
    LabelledRows,
    VariantWindow,
    Window,
)
from controller.rollout.state import RolloutPlan
from controller.rollout.steps import Progress, decide, wait_for_labels

P99_Z = 2.3263
"""The standard normal's 99th percentile: a log-normal's p99 is median * exp(P99_Z * sigma)."""
REFERENCE_ROWS = 200
"""Stable predictions the prediction buckets are cut from (at their deciles)."""
MAX_WINDOWS = 500


@dataclass(frozen=True)
class Behaviour:
    """How one model version answers."""

    error_rate: float = 0.001
    latency_median_s: float = 0.002
    latency_p99_s: float = 0.005
    slow_share: float = 0.0
    """Share of answers that take `slow_extra_s` longer (a tail regression)."""
    slow_extra_s: float = 0.0
    prediction_mean: float | None = 0.34
    """Numeric predictions: normal with this mean and `prediction_sd` (None: class labels)."""
    prediction_sd: float = 0.07
    prediction_deciles: tuple[float, ...] = ()
    """The live model's shape: stable's deciles (its routers' profile). When set, numeric
    predictions are drawn from it (interpolated between deciles) and moved by
    `prediction_mean` minus its own mean, instead of from a normal."""
    class_shares: tuple[float, ...] = ()
    rows_per_request: int = 1
    """Rows per request, all alike (a client's batch of one case): the worst case for the
    independence the tests assume of rows."""
    label_error_sd: float = 1.0
    """Labelled rows' errors: |normal(0, this)| (numbers)..."""
    label_wrong_share: float | None = None
    """...or, when set, wrong classes with this chance."""


@dataclass(frozen=True)
class Scenario:
    """A stable and a canary behaviour, and what the judge should do with it."""

    name: str
    stable: Behaviour
    canary: Behaviour
    faulty: bool
    labelled_share: float = 0.0
    """Share of requests whose label comes back (one window after the request)."""
    min_labels: int = 0
    """The rollout's `--min-labels` (0: labels are not judged)."""


@dataclass(frozen=True)
class Traffic:
    """Requests per second reaching the routers, and the rollout's plan."""

    requests_per_s: float = 20.0
    steps: tuple[float, ...] = RolloutPlan.steps
    interval_s: float = RolloutPlan.interval_s
    limits: GateLimits = field(default_factory=GateLimits)
    max_failed_checks: int = RolloutPlan.max_failed_checks
    max_insufficient_windows: int = RolloutPlan.max_insufficient_windows
    label_wait_s: float = RolloutPlan.label_wait_s


@dataclass(frozen=True)
class Outcome:
    """How one simulated rollout ended."""

    rolled_back: bool
    weight: float
    """The canary's weight when it ended."""
    canary_requests: float
    """Canary requests until it ended."""
    windows: int
    why: str


def scenarios() -> list[Scenario]:
    """Return the faults the judge must catch, and identical twins of each kind of model."""
    scale_0_1 = Behaviour()
    scale_0_100 = Behaviour(prediction_mean=60.0, prediction_sd=15.0)
    classes = Behaviour(prediction_mean=None, class_shares=(0.6, 0.3, 0.1), label_wrong_share=0.1)
    batched = replace(scale_0_1, rows_per_request=10)
    return [
        Scenario("identical twin, 0..100 model", scale_0_100, scale_0_100, faulty=False),
        Scenario("identical twin, 0..1 model", scale_0_1, scale_0_1, faulty=False),
        Scenario("identical twin, 3-class model", classes, classes, faulty=False),
        Scenario("identical twin, batches of 10 alike rows", batched, batched, faulty=False),
        Scenario("5xx 2% against stable's 0.1%", scale_0_1,
                 replace(scale_0_1, error_rate=0.02), faulty=True),
        Scenario("p99 +20 ms at a 5 ms baseline (2% of answers +20 ms)", scale_0_1,
                 replace(scale_0_1, slow_share=0.02, slow_extra_s=0.020), faulty=True),
        Scenario("0..100 model, mean +0.5 sd", scale_0_100,
                 replace(scale_0_100, prediction_mean=67.5), faulty=True),
        Scenario("0..1 model, mean +0.5 sd", scale_0_1,
                 replace(scale_0_1, prediction_mean=0.375), faulty=True),
        Scenario("3-class model, 10% of labels flipped (0 to 2)", classes,
                 replace(classes, class_shares=(0.5, 0.3, 0.2)), faulty=True),
        Scenario("labels on half the requests, errors alike", scale_0_100, scale_0_100,
                 faulty=False, labelled_share=0.5, min_labels=20),
        Scenario("labels on half the requests, errors 1.5x (same predictions)", scale_0_100,
                 replace(scale_0_100, label_error_sd=1.5), faulty=True, labelled_share=0.5,
                 min_labels=20),
        Scenario("labels on half the requests, classes wrong 15% against 10%", classes,
                 replace(classes, label_wrong_share=0.15), faulty=True, labelled_share=0.5,
                 min_labels=20),
        Scenario("labels on half the requests, classes wrong 25% against 10%", classes,
                 replace(classes, label_wrong_share=0.25), faulty=True, labelled_share=0.5,
                 min_labels=20),
    ]  # fmt: skip


def simulate(scenario: Scenario, traffic: Traffic, rollouts: int, seed: int = 0) -> list[Outcome]:
    """Run `rollouts` rollouts of the scenario; each ends promoted or rolled back."""
    rng = np.random.default_rng(seed)
    return [_one_rollout(scenario, traffic, rng) for _ in range(rollouts)]


@dataclass(frozen=True)
class Summary:
    """What a scenario's rollouts add up to."""

    rolled_back: float
    """Share rolled back."""
    before_half: float
    """Share rolled back at a weight below 50%."""
    by_gates: float
    """Share rolled back because a gate failed (not for want of traffic)."""
    median_requests: float | None
    """Median canary requests until the rollback, over those rolled back."""
    median_windows: float | None


def summarize(outcomes: Iterable[Outcome]) -> Summary:
    """Add up outcomes of one scenario."""
    outcomes = list(outcomes)
    back = [outcome for outcome in outcomes if outcome.rolled_back]
    count = max(len(outcomes), 1)
    return Summary(
        rolled_back=len(back) / count,
        before_half=sum(outcome.weight < 50 for outcome in back) / count,
        by_gates=sum(outcome.why.startswith("failed checks") for outcome in back) / count,
        median_requests=statistics.median(o.canary_requests for o in back) if back else None,
        median_windows=statistics.median(o.windows for o in back) if back else None,
    )


def _one_rollout(scenario: Scenario, traffic: Traffic, rng: np.random.Generator) -> Outcome:
    edges = _reference_edges(scenario.stable, rng)
    evidence, progress, canary_requests = RolloutEvidence(), Progress(), 0.0
    limits = replace(traffic.limits, min_labels=scenario.min_labels)
    arriving = LabelledRows()  # the labels of the window before, due in this one
    step, windows_in_step, labelled_in_step = progress.step, 0, 0
    for windows in range(1, MAX_WINDOWS + 1):
        weight = traffic.steps[progress.step]
        total = int(rng.poisson(traffic.requests_per_s * traffic.interval_s))
        to_canary = int(rng.binomial(total, weight / 100))
        window = Window(
            stable=_variant_window(scenario.stable, total - to_canary, edges, rng),
            canary=_variant_window(scenario.canary, to_canary, edges, rng),
            labels=arriving,
        )
        arriving = _labelled(scenario, to_canary, total - to_canary, rng)
        canary_requests += to_canary
        windows_in_step += 1
        labelled_in_step += len(window.labels.canary)
        verdict = wait_for_labels(
            judge(window, limits, evidence), labelled_in_step, limits.min_labels,
            windows_in_step * traffic.interval_s, traffic.label_wait_s,
        )  # fmt: skip
        decision = decide(progress, verdict, len(traffic.steps), traffic.max_failed_checks,
                          traffic.max_insufficient_windows)  # fmt: skip
        if decision.action in ("promote", "roll_back"):
            return Outcome(decision.action == "roll_back", weight, canary_requests, windows,
                           decision.why)  # fmt: skip
        if progress.step != step:
            step, windows_in_step, labelled_in_step = progress.step, 0, 0
    return Outcome(False, traffic.steps[progress.step], canary_requests, MAX_WINDOWS, "unended")


def _labelled(
    scenario: Scenario, canary_requests: int, stable_requests: int, rng: np.random.Generator
) -> LabelledRows:
    """Draw the labelled rows of a window's requests: each variant's errors."""
    if scenario.labelled_share <= 0:
        return LabelledRows()

    def errors(behaviour: Behaviour, requests: int) -> tuple[float, ...]:
        count = int(rng.binomial(requests, scenario.labelled_share))
        if behaviour.label_wrong_share is not None:
            return tuple((rng.random(count) < behaviour.label_wrong_share).astype(float).tolist())
        return tuple(np.abs(rng.normal(0.0, behaviour.label_error_sd, count)).tolist())

    return LabelledRows(
        canary=errors(scenario.canary, canary_requests),
        stable=errors(scenario.stable, stable_requests),
        classes=scenario.stable.label_wrong_share is not None,
    )


def _reference_edges(stable: Behaviour, rng: np.random.Generator) -> list[float]:
    """Return the prediction buckets' bounds: stable's deciles on its first predictions."""
    if stable.prediction_mean is None:
        return []
    if stable.prediction_deciles:  # the router counts at the deciles it profiled
        return sorted(set(stable.prediction_deciles))
    sample = rng.normal(stable.prediction_mean, stable.prediction_sd, REFERENCE_ROWS)
    return sorted(set(np.quantile(sample, np.linspace(0.1, 0.9, 9)).tolist()))


def _variant_window(
    behaviour: Behaviour, requests: int, edges: list[float], rng: np.random.Generator
) -> VariantWindow:
    if requests <= 0:
        return VariantWindow()
    sigma = math.log(behaviour.latency_p99_s / behaviour.latency_median_s) / P99_Z
    latency = rng.lognormal(math.log(behaviour.latency_median_s), sigma, requests)
    latency += (rng.random(requests) < behaviour.slow_share) * behaviour.slow_extra_s
    rows = behaviour.rows_per_request
    predictions: Categories
    if behaviour.prediction_mean is None:
        shares = np.array(behaviour.class_shares)
        counts = rng.multinomial(requests, shares / shares.sum()) * rows
        predictions = {str(label): float(count) for label, count in enumerate(counts)}
    else:
        values = _predictions(behaviour, behaviour.prediction_mean, requests, rng)
        predictions = {
            name: count * rows for name, count in categories_of(_cumulative(values, edges)).items()
        }
    return VariantWindow(
        requests=float(requests),
        errors=float(rng.binomial(requests, behaviour.error_rate)),
        latency=_cumulative(latency, list(LATENCY_BUCKETS)),
        predictions={"predictions": predictions},
    )


def _predictions(
    behaviour: Behaviour, mean: float, count: int, rng: np.random.Generator
) -> np.ndarray:
    """Draw `count` numeric predictions of `behaviour` around `mean`."""
    if not behaviour.prediction_deciles:
        return rng.normal(mean, behaviour.prediction_sd, count)
    shape = _shape(behaviour.prediction_deciles)
    return shape.draw(count, rng) + (mean - shape.mean)


@dataclass(frozen=True)
class Shape:
    """A distribution known by its deciles, as a router's profile knows a model's predictions.

    Linear between the deciles, its tails as wide as the neighbouring tenth.
    """

    knots: tuple[float, ...]
    """Its quantile function's values at 0, 0.1, ..., 1."""
    mean: float
    sd: float

    @classmethod
    def of(cls, deciles: tuple[float, ...]) -> Shape:
        """Build the shape of nine deciles (fewer or unordered: raise ValueError)."""
        if len(deciles) != 9 or list(deciles) != sorted(deciles):
            raise ValueError(f"nine ordered deciles are needed, not {deciles}")
        knots = (2 * deciles[0] - deciles[1], *deciles, 2 * deciles[-1] - deciles[-2])
        grid = np.interp(np.linspace(0, 1, 10_001), np.linspace(0, 1, 11), knots)
        return cls(knots, float(grid.mean()), float(grid.std()))

    def draw(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """Draw `count` values."""
        return np.interp(rng.random(count), np.linspace(0, 1, 11), self.knots)


@functools.lru_cache(maxsize=16)
def _shape(deciles: tuple[float, ...]) -> Shape:
    return Shape.of(deciles)


def _cumulative(values: np.ndarray, bounds: list[float]) -> Buckets:
    """Cumulative buckets of `values` at `bounds` and +Inf, as a Prometheus histogram has."""
    at_or_below = np.searchsorted(np.sort(values), bounds, side="right")
    return [*zip(bounds, at_or_below.astype(float).tolist(), strict=True),
            (math.inf, float(len(values)))]  # fmt: skip
