"""The rollout judge on known numbers: the sequential test, each gate, the step rules."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram

from contracts.payloads import OutputProfile, PredictionsProfile
from controller.quality import LabelledRow
from controller.rollout.evidence import BOTH_RATIOS, UP_RATIOS, Evidence, RolloutEvidence, effective
from controller.rollout.gates import (
    judge,
    label_gate,
    latency_bound,
    latency_gate,
    prediction_gates,
)
from controller.rollout.histograms import categories_of, ordered, psi, quantile, upper_bound
from controller.rollout.judgement import (
    Buckets,
    Categories,
    GateLimits,
    LabelledRows,
    VariantWindow,
    Verdict,
    Window,
)
from controller.rollout.planner import plan_report, stable_deciles
from controller.rollout.simulate import Shape, Traffic
from controller.rollout.state import select_labelled
from controller.rollout.steps import Progress, decide, wait_for_labels

LATENCY_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, math.inf)


def buckets_of(values: list[float], bounds: tuple[float, ...] = LATENCY_BOUNDS) -> Buckets:
    """Cumulative buckets as a Prometheus histogram would expose them."""
    return [(bound, float(sum(value <= bound for value in values))) for bound in bounds]


def variant(requests: int, errors: int = 0, latency: float = 0.004,
            predictions: Categories | None = None) -> VariantWindow:  # fmt: skip
    """A variant's window: all answers alike in latency; predictions spread over 4 buckets."""
    spread = {"1": requests * 0.25, "2": requests * 0.25, "3": requests * 0.25,
              "+Inf": requests * 0.25}  # fmt: skip
    return VariantWindow(
        requests=requests, errors=errors, latency=buckets_of([latency] * requests),
        predictions={"predictions": spread if predictions is None else predictions},
    )  # fmt: skip


def gate(verdict_gates: list, name: str):  # type: ignore[no-untyped-def,type-arg]
    (found,) = [result for result in verdict_gates if result.gate == name]
    return found


def binomial(n: int, k: int, p: float) -> float:
    return math.comb(n, k) * p**k * (1 - p) ** (n - k)


# The sequential test


def test_one_window_of_evidence_is_the_likelihood_ratio_by_hand() -> None:
    evidence = Evidence((3.0,))
    evidence.add(10, 10, 0.5)  # ratio 3 at share 1/2: each event the canary's with prob. 3/4
    assert evidence.value == pytest.approx(1.5**10)
    evidence.add(4, 0, 0.5)  # then 4 events all stable's: each (1/4) / (1/2)
    assert evidence.value == pytest.approx(1.5**10 * 0.5**4)


def test_under_the_null_the_mixture_averages_exactly_one() -> None:
    """E[value] = 1 when the canary's events are Binomial(n, share): a test martingale."""
    for n, share in ((12, 0.1), (30, 0.5), (7, 0.9)):
        for ratios in (UP_RATIOS, BOTH_RATIOS):
            expected = 0.0
            for k in range(n + 1):
                evidence = Evidence(ratios)
                evidence.add(n, k, share)
                expected += binomial(n, k, share) * evidence.value
            assert expected == pytest.approx(1.0)


def test_a_hypergeometric_count_averages_at_most_one() -> None:
    """Given a window's totals the canary's count is hypergeometric: less spread, E <= 1."""
    requests, canary_requests = 40, 8
    for events in (3, 10, 25):
        expected = 0.0
        for k in range(min(events, canary_requests) + 1):
            chance = (math.comb(canary_requests, k)
                      * math.comb(requests - canary_requests, events - k)
                      / math.comb(requests, events))  # fmt: skip
            evidence = Evidence(BOTH_RATIOS)
            evidence.add(events, k, canary_requests / requests)
            expected += chance * evidence.value
        assert expected <= 1.0 + 1e-12


def test_repeated_looks_at_a_null_keep_the_false_alarm_rate() -> None:
    """Ville: 20 looks each at 2,000 null rollouts cross 1/alpha at most alpha of the time."""
    rng, alpha, crossed = random.Random(7), 0.05, 0
    for _ in range(2_000):
        evidence = Evidence()
        for _window in range(20):
            share = rng.choice((0.05, 0.1, 0.25, 0.5))
            events = rng.randint(0, 12)
            evidence.add(events, sum(rng.random() < share for _ in range(events)), share)
            if evidence.value >= 1 / alpha:
                crossed += 1
                break
    assert crossed / 2_000 <= alpha


def test_evidence_survives_a_save_and_another_grid_starts_afresh() -> None:
    evidence = Evidence()
    evidence.add(20, 15, 0.25)
    again = Evidence.from_json(evidence.to_json(), UP_RATIOS)
    assert again.value == pytest.approx(evidence.value) and again.value > 100
    assert Evidence.from_json(evidence.to_json(), BOTH_RATIOS).value == 1.0


def test_a_batch_counts_as_one_request() -> None:
    assert effective(50, 10) == 5 and effective(50, 1) == 50 and effective(50, 0.5) == 50


# The gates


def test_a_healthy_canary_passes_every_gate() -> None:
    evidence = RolloutEvidence()
    verdict = judge(Window(variant(900, 1), variant(100)), GateLimits(), evidence)
    assert verdict.outcome == "pass"
    assert {result.gate for result in verdict.gates} == {
        "error_rate", "error_ratio", "p99_ratio", "prediction_psi",
    }  # fmt: skip
    assert all(result.passed and result.evidence < result.needed for result in verdict.gates)


def test_five_percent_errors_fail_the_error_ratio_gate() -> None:
    verdict = judge(Window(variant(900, 1), variant(100, 5)), GateLimits(), RolloutEvidence())
    ratio = gate(verdict.gates, "error_ratio")
    assert verdict.outcome == "fail" and not ratio.passed
    assert ratio.value == pytest.approx(0.05 / (1 / 900)) and ratio.evidence >= ratio.needed


def test_evidence_builds_over_windows_that_each_look_fine() -> None:
    """2 errors in 100 against stable's 1 in 900: not enough once, enough after a few."""
    evidence, outcomes = RolloutEvidence(), []
    for _ in range(6):
        outcomes.append(
            judge(Window(variant(900, 1), variant(100, 2)), GateLimits(), evidence).outcome
        )
    assert outcomes[0] == "pass" and outcomes[-1] == "fail"


def test_the_error_budget_is_judged_even_when_stable_fails_alike() -> None:
    """A canary at 5% 5xx fails --max-error-rate 1% though stable fails as often."""
    evidence, outcome = RolloutEvidence(), "pass"
    for _ in range(5):
        verdict = judge(Window(variant(900, 45), variant(300, 15)), GateLimits(), evidence)
        outcome = verdict.outcome
    assert outcome == "fail" and not gate(verdict.gates, "error_rate").passed
    assert gate(verdict.gates, "error_ratio").passed


def test_a_trivial_difference_on_huge_traffic_passes() -> None:
    """0.12% against 0.10% on ten million requests: significant, but under the 1.5x floor."""
    stable, canary = variant(10_000_000, 10_000), variant(10_000_000, 12_000)
    verdict = judge(Window(stable, canary), GateLimits(), RolloutEvidence())
    ratio = gate(verdict.gates, "error_ratio")
    assert ratio.evidence >= ratio.needed and ratio.passed and verdict.outcome == "pass"


def test_too_little_canary_traffic_is_insufficient_never_a_pass() -> None:
    verdict = judge(Window(variant(900), variant(49)), GateLimits(), RolloutEvidence())
    assert verdict.outcome == "insufficient"


def test_a_canary_failing_everything_fails_even_on_little_traffic() -> None:
    verdict = judge(Window(variant(900), variant(20, 20)), GateLimits(), RolloutEvidence())
    assert verdict.outcome == "fail"


def test_at_full_weight_the_canary_alone_is_judged() -> None:
    evidence = RolloutEvidence()
    judge(Window(variant(500), variant(500)), GateLimits(), evidence)
    verdict = judge(Window(VariantWindow(), variant(1000)), GateLimits(), evidence)
    assert verdict.outcome == "pass"


def test_at_full_weight_the_canary_is_held_to_stable_s_earlier_rate() -> None:
    """No stable traffic at 100%: the canary is tested against an upper bound of stable's
    share in the windows before (0.1% here), so 3% 5xx fails where 0.1% passes."""
    verdicts = {}
    for errors in (60, 2):
        evidence = RolloutEvidence()
        for _ in range(3):
            judge(Window(variant(1000, 1), variant(100)), GateLimits(), evidence)
        full = judge(Window(VariantWindow(), variant(2000, errors)), GateLimits(), evidence)
        verdicts[errors] = gate(full.gates, "error_ratio")
    assert not verdicts[60].passed and verdicts[60].evidence >= verdicts[60].needed
    assert verdicts[2].passed and verdicts[2].evidence < 1
    assert upper_bound(0, 3000, 1e-4) == pytest.approx(1 - 1e-4 ** (1 / 3000))


def test_a_canary_three_times_slower_fails_on_latency() -> None:
    evidence, verdict = RolloutEvidence(), None
    for _ in range(3):
        verdict = judge(Window(variant(900, latency=0.004), variant(100, latency=0.012)),
                        GateLimits(), evidence)  # fmt: skip
    assert verdict is not None and verdict.outcome == "fail"
    latency = gate(verdict.gates, "p99_ratio")
    assert not latency.passed and latency.value is not None and latency.value > 1.5


def test_the_latency_bound_is_the_later_of_ratio_and_tolerance() -> None:
    fast = buckets_of([0.0009] * 900)
    assert latency_bound(fast, GateLimits()) == 0.01  # p99 0.9 ms + 5 ms, rounded up
    assert latency_bound(fast, GateLimits(p99_tolerance_s=0)) == 0.0025  # 1.5 x 0.9 ms
    assert latency_bound([], GateLimits()) is None


def test_a_p99_within_the_tolerance_passes() -> None:
    evidence = RolloutEvidence()
    for _ in range(5):
        verdict = judge(Window(variant(900, latency=0.001), variant(100, latency=0.003)),
                        GateLimits(), evidence)  # fmt: skip
    assert gate(verdict.gates, "p99_ratio").passed


def test_shifted_predictions_fail_and_name_the_output() -> None:
    shifted = {"1": 5.0, "2": 10.0, "3": 25.0, "+Inf": 60.0}
    evidence, verdict = RolloutEvidence(), None
    for _ in range(3):
        verdict = judge(Window(variant(900), variant(100, predictions=shifted)),
                        GateLimits(), evidence)  # fmt: skip
    assert verdict is not None and verdict.outcome == "fail"
    assert not gate(verdict.gates, "prediction_psi").passed


def test_each_output_and_class_labels_are_judged() -> None:
    def window(canary_labels: Categories) -> Window:
        stable = VariantWindow(900, predictions={
            "label": {"cat": 540.0, "dog": 270.0, "eel": 90.0},
            "score": {"0.5": 450.0, "+Inf": 450.0},
        })  # fmt: skip
        canary = VariantWindow(100, predictions={
            "label": canary_labels, "score": {"0.5": 50.0, "+Inf": 50.0},
        })  # fmt: skip
        return Window(stable, canary)

    evidence = RolloutEvidence()  # ~1,000 canary requests find 10 points moved (bench/judge.py)
    for _ in range(15):
        verdict = judge(window({"cat": 50.0, "dog": 30.0, "eel": 20.0}), GateLimits(), evidence)
    assert not gate(verdict.gates, "prediction_psi:label").passed
    assert gate(verdict.gates, "prediction_psi:score").passed
    same = RolloutEvidence()
    for _ in range(15):
        verdict = judge(window({"cat": 60.0, "dog": 30.0, "eel": 10.0}), GateLimits(), same)
    assert verdict.outcome == "pass"


def test_a_model_without_usable_predictions_says_so() -> None:
    window = Window(VariantWindow(900), VariantWindow(100))
    verdict = judge(window, GateLimits(), RolloutEvidence())
    predictions = gate(verdict.gates, "prediction_psi")
    assert predictions.passed and predictions.value is None
    assert "no usable predictions" in predictions.detail


def test_rollout_evidence_survives_a_save() -> None:
    evidence = RolloutEvidence()
    judge(Window(variant(900, 1), variant(100, 3)), GateLimits(), evidence)
    again = RolloutEvidence.from_json(evidence.to_json())
    assert again.to_json() == evidence.to_json()
    assert RolloutEvidence.from_json({}).to_json() == RolloutEvidence().to_json()


# Numbers from histograms


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
    assert categories_of(exposed) == {
        "0.001": 50.0, "0.0025": 0.0, "0.005": 40.0, "0.01": 0.0, "0.025": 10.0, "0.05": 0.0,
        "0.1": 0.0, "+Inf": 0.0,
    }  # fmt: skip


def test_psi_on_known_numbers() -> None:
    assert psi({"a": 50, "b": 50}, {"a": 5, "b": 5}) == pytest.approx(0.0)
    by_hand = 2 * (80 / 101) * math.log(90.5 / 10.5)  # each count + 0.5, over 100 + 1
    assert psi({"a": 90, "b": 10}, {"a": 10, "b": 90}) == pytest.approx(by_hand)
    assert psi({}, {"a": 1}) is None
    assert ordered(["+Inf", "10", "2", "dog", "cat"]) == ["2", "10", "+Inf", "cat", "dog"]


# The step rules


def test_a_failed_gate_rolls_back_at_once_an_unreadable_window_only_counts() -> None:
    failing = judge(Window(variant(900), variant(100, 50)), GateLimits(), RolloutEvidence())
    assert decide(Progress(), failing, 5, 2, 5).action == "roll_back"
    progress = Progress()
    assert decide(progress, None, 5, 2, 5).action == "hold"
    assert decide(progress, None, 5, 2, 5).action == "roll_back"


def test_insufficient_windows_hold_then_roll_back_and_passes_advance_then_promote() -> None:
    thin = judge(Window(variant(900), variant(10)), GateLimits(), RolloutEvidence())
    progress = Progress()
    assert [decide(progress, thin, 2, 2, 3).action for _ in range(3)] == [
        "hold", "hold", "roll_back",
    ]  # fmt: skip
    good = judge(Window(variant(900), variant(100)), GateLimits(), RolloutEvidence())
    progress = Progress()
    assert [decide(progress, good, 2, 2, 3).action for _ in range(2)] == ["advance", "promote"]


# --- the labels gate ------------------------------------------------------------------------


def _labelled(rng: random.Random, canary_sd: float, stable_sd: float, rows: int = 60) -> Window:
    """A window whose only data are labelled rows: |normal errors| of each variant's sd."""
    errors = lambda sd, n: tuple(abs(rng.gauss(0, sd)) for _ in range(n))  # noqa: E731
    return Window(
        stable=VariantWindow(), canary=VariantWindow(),
        labels=LabelledRows(canary=errors(canary_sd, rows // 3), stable=errors(stable_sd, rows)),
    )  # fmt: skip


def _labels_false_alarm(canary_sd: float, rollouts: int, windows: int, seed: int) -> float:
    """Share of rollouts whose labels gate fails within `windows` windows."""
    rng = random.Random(seed)
    limits = GateLimits(false_alarm_rate=0.2, min_labels=1, max_label_error_ratio=1.0)
    failed = 0
    for _ in range(rollouts):
        evidence = RolloutEvidence()
        for _ in range(windows):
            if not label_gate(_labelled(rng, canary_sd, 1.0), limits, evidence).passed:
                failed += 1
                break
    return failed / rollouts


def test_the_labels_gate_keeps_its_false_alarm_rate_over_many_looks() -> None:
    """Canary errors like stable's, judged after each of 10 windows (no practical floor): the
    gate fails no more often than its share of the budget (0.2 / 4 * 0.9 = 4.5%), by
    simulation of 2,000 rollouts; a canary with errors 4 times as large is caught in all."""
    alpha = GateLimits(false_alarm_rate=0.2, min_labels=1).alpha("label_errors")
    rate = _labels_false_alarm(1.0, rollouts=2000, windows=10, seed=1)
    sd = math.sqrt(alpha * (1 - alpha) / 2000)
    assert rate <= alpha + 3 * sd, (rate, alpha)
    assert _labels_false_alarm(4.0, rollouts=200, windows=10, seed=2) == 1.0


def _failed_at(
    canary_sd: float, history: int, rollouts: int, windows: int, seed: int
) -> list[int | None]:
    """The window each rollout's labels gate failed at (None: never), starting from `history`
    of stable's labelled errors from before the rollout."""
    rng = random.Random(seed)
    limits = GateLimits(false_alarm_rate=0.2, min_labels=1, max_label_error_ratio=1.0)
    found: list[int | None] = []
    for _ in range(rollouts):
        evidence = RolloutEvidence(stable_errors=[abs(rng.gauss(0, 1.0)) for _ in range(history)])
        failed = None
        for window in range(windows):
            if not label_gate(_labelled(rng, canary_sd, 1.0), limits, evidence).passed:
                failed = window
                break
        found.append(failed)
    return found


def test_stable_errors_from_before_the_rollout_leave_no_blind_first_window() -> None:
    """With stable's labelled errors from before the rollout, a canary wrong on every row
    (errors 4 times stable's) is caught at its first window of 20 canary rows in 191 of 200
    rollouts, where without them the first window only cuts the bound (0 of 200); a canary like
    stable still fails no more often than the gate's share of the budget over 10 looks (2,000
    rollouts)."""
    blind = _failed_at(4.0, history=0, rollouts=200, windows=3, seed=3)
    seeded = _failed_at(4.0, history=200, rollouts=200, windows=3, seed=3)
    assert blind.count(0) == 0 and seeded.count(0) >= 0.9 * 200, (blind.count(0), seeded.count(0))
    alpha = GateLimits(false_alarm_rate=0.2, min_labels=1).alpha("label_errors")
    twins = _failed_at(1.0, history=200, rollouts=2000, windows=10, seed=4)
    rate = sum(failed is not None for failed in twins) / len(twins)
    assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / 2000), (rate, alpha)


def _shadowed(rng: random.Random, rows: int, canary_wrong: float, paired: bool) -> Window:
    """A window of class labels on rows of shared difficulty: stable is wrong on the hardest
    20%; the canary on the hardest `canary_wrong` share for 80% of rows, at random for the
    rest (two models of one problem fail on the same rows). Judged `paired` (the canary's
    answers are shadow copies of stable's requests) or as two samples of other rows."""
    pairs = []
    for _ in range(rows):
        hardness = rng.random()
        canary_hardness = hardness if rng.random() < 0.8 else rng.random()
        pairs.append((float(canary_hardness < canary_wrong), float(hardness < 0.2)))
    if paired:
        labels = LabelledRows(pairs=tuple(pairs), classes=True)
    else:
        stable = tuple(float(rng.random() < 0.2) for _ in range(rows))
        labels = LabelledRows(canary=tuple(c for c, _ in pairs), stable=stable, classes=True)
    return Window(stable=VariantWindow(), canary=VariantWindow(), labels=labels)


def _caught(canary_wrong: float, paired: bool, rollouts: int, seed: int,
            false_alarm_rate: float = 0.01, ratio: float = 1.2) -> float:  # fmt: skip
    """Share of rollouts (10 windows of 50 labelled rows) the labels gate fails."""
    rng = random.Random(seed)
    limits = GateLimits(false_alarm_rate=false_alarm_rate, min_labels=1,
                        max_label_error_ratio=ratio)  # fmt: skip
    failed = 0
    for _ in range(rollouts):
        evidence = RolloutEvidence()
        for _ in range(10):
            window = _shadowed(rng, 50, canary_wrong, paired)
            if not label_gate(window, limits, evidence).passed:
                failed += 1
                break
    return failed / rollouts


def test_shadowed_rows_are_judged_paired_keeping_the_false_alarm_rate() -> None:
    """Paired (McNemar) on shadowed rows: a canary wrong as often as stable fails no more
    often than the gate's share of the budget over 10 looks (2,000 rollouts, no floor); one
    wrong 1.5 times as often is caught in nearly every rollout, where the same rows judged as
    two samples catch it in few: the rows both models get wrong cost no evidence."""
    alpha = GateLimits(false_alarm_rate=0.2, min_labels=1).alpha("label_errors")
    rate = _caught(0.2, paired=True, rollouts=2000, seed=1, false_alarm_rate=0.2, ratio=1.0)
    assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / 2000), (rate, alpha)
    paired = _caught(0.3, paired=True, rollouts=300, seed=2)
    unpaired = _caught(0.3, paired=False, rollouts=300, seed=2)
    assert paired >= 0.95 and unpaired <= 0.5, (paired, unpaired)


def test_a_window_of_pairs_counts_for_both_variants() -> None:
    window = Window(
        stable=VariantWindow(), canary=VariantWindow(),
        labels=LabelledRows(pairs=((1.0, 0.0),) * 30 + ((0.0, 0.0),) * 70, classes=True),
    )  # fmt: skip
    evidence = RolloutEvidence()
    verdict = judge(window, GateLimits(min_labels=10), evidence)
    gate = next(g for g in verdict.gates if g.gate == "label_errors")
    assert not gate.passed and "100 of them shadowed pairs" in gate.detail
    assert verdict.labelled == (100, 100)
    assert RolloutEvidence.from_json(evidence.to_json()).pairs == 100


def test_wrong_classes_fail_the_labels_gate_and_the_verdict_counts_rows() -> None:
    limits = GateLimits(min_labels=10)
    evidence = RolloutEvidence()
    window = Window(
        stable=VariantWindow(requests=400), canary=VariantWindow(requests=100),
        labels=LabelledRows(canary=(1.0,) * 30 + (0.0,) * 70, stable=(1.0,) * 20 + (0.0,) * 380,
                            classes=True),
    )  # fmt: skip
    verdict = judge(window, limits, evidence)
    gate = next(g for g in verdict.gates if g.gate == "label_errors")
    assert not gate.passed and gate.value == pytest.approx(0.30 / 0.05)
    assert verdict.labelled == (100, 400) and verdict.outcome == "fail"


def test_a_step_waits_for_its_labels_then_fails_checks_without_them() -> None:
    passing = Verdict("pass", [], 100.0)
    assert wait_for_labels(passing, 5, 10, 30.0, 600.0).outcome == "waiting"
    assert wait_for_labels(passing, 10, 10, 30.0, 600.0).outcome == "pass"
    late = wait_for_labels(passing, 5, 10, 601.0, 600.0)
    assert late.outcome == "fail" and late.gates[-1].gate == "labels"
    progress = Progress()
    assert decide(progress, wait_for_labels(passing, 0, 10, 1.0, 600.0), 5, 2, 5).action == "hold"
    assert progress.insufficient_in_row == 0  # waiting for labels is not too little traffic
    assert decide(progress, late, 5, 2, 5).action == "hold"
    assert decide(progress, late, 5, 2, 5).action == "roll_back"


def test_a_verdict_records_what_each_variant_did_in_its_window() -> None:
    latency = [(0.005, 90.0), (0.01, 99.0), (math.inf, 100.0)]
    window = Window(
        stable=VariantWindow(requests=100, errors=1, latency=latency),
        canary=VariantWindow(requests=50, errors=5, latency=[(0.005, 45.0), (math.inf, 50.0)]),
        labels=LabelledRows(canary=(2.0, 4.0), stable=(1.0,), pairs=((6.0, 3.0),)),
    )  # fmt: skip
    shown = judge(window, GateLimits(), RolloutEvidence()).variants
    assert shown["stable"]["error_share"] == 0.01 and shown["canary"]["error_share"] == 0.1
    assert shown["stable"]["p99_s"] == pytest.approx(0.01)
    assert shown["canary"]["p50_s"] == pytest.approx(0.005 * 25 / 45)  # inside the first bucket
    assert shown["canary"]["label_error"] == 4.0 and shown["canary"]["labelled"] == 3
    assert shown["stable"]["label_error"] == 2.0 and shown["stable"]["labelled"] == 2


def test_a_rollout_judges_shadow_answers_paired_with_stable_rows_of_their_requests() -> None:
    """Rows as the controller's labels make them: v1 stable, v2 canary, a shadowed request
    (stable's row and the canary's shadow row, paired), and another version's row left out."""
    stable_row = LabelledRow.of("stable", "1", 50.0, 52.0)
    rows = [
        LabelledRow.of("canary", "2", 40.0, 41.0),
        stable_row,
        replace(LabelledRow.of("shadow", "2", 60.0, 52.0), paired=stable_row),
        LabelledRow.of("stable", "1", 30.0, 30.5),
        LabelledRow.of("canary", "9", 1.0, 100.0),
    ]
    labelled = select_labelled(rows, "2", "1")
    assert labelled.canary == (1.0,) and labelled.stable == (0.5,)
    assert labelled.pairs == ((8.0, 2.0),) and not labelled.classes


def _latency_window(rng: random.Random, canary_slowdown: float) -> Window:
    """900 stable and 100 canary answers, log-normal around 4 ms (the canary's times
    `canary_slowdown`)."""

    def times(count: int, scale: float) -> list[float]:
        return [0.004 * scale * math.exp(rng.gauss(0, 0.5)) for _ in range(count)]

    return Window(
        VariantWindow(900, latency=buckets_of(times(900, 1.0))),
        VariantWindow(100, latency=buckets_of(times(100, canary_slowdown))),
    )


def _latency_failed_at(
    slowdown: float, history: int, rollouts: int, windows: int, seed: int
) -> list[int | None]:
    """The window each rollout's latency gate failed at (None: never), starting from `history`
    answers of stable's from before the rollout."""
    rng = random.Random(seed)
    limits = GateLimits(false_alarm_rate=0.2)
    found: list[int | None] = []
    for _ in range(rollouts):
        before = [0.004 * math.exp(rng.gauss(0, 0.5)) for _ in range(history)]
        evidence = RolloutEvidence(stable_latency=categories_of(buckets_of(before)))
        failed = None
        for window in range(windows):
            if not latency_gate(_latency_window(rng, slowdown), limits, evidence).passed:
                failed = window
                break
        found.append(failed)
    return found


def test_stable_latency_from_before_the_rollout_leaves_no_blind_first_window() -> None:
    """With stable's latency before the rollout, a canary ten times slower is caught in its
    first window in every one of 100 rollouts (none without: the first window only cut the
    bound); a canary like stable fails no more often than the gate's share of the budget over
    10 looks (1,000 rollouts)."""
    blind = _latency_failed_at(10.0, history=0, rollouts=100, windows=2, seed=5)
    seeded = _latency_failed_at(10.0, history=5000, rollouts=100, windows=2, seed=5)
    assert blind.count(0) == 0 and seeded.count(0) == 100, (blind.count(0), seeded.count(0))
    alpha = GateLimits(false_alarm_rate=0.2).alpha("p99_ratio")
    twins = _latency_failed_at(1.0, history=5000, rollouts=1000, windows=10, seed=6)
    rate = sum(failed is not None for failed in twins) / len(twins)
    assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / 1000), (rate, alpha)


SHARES = {"1": 0.1, "2": 0.2, "3": 0.3, "+Inf": 0.4}


def _drawn(rng: random.Random, count: int, shares: dict[str, float]) -> Categories:
    drawn = rng.choices(list(shares), weights=list(shares.values()), k=count)
    return {category: float(drawn.count(category)) for category in shares}


def _full_weight_failed(canary: dict[str, float], rollouts: int, seed: int) -> float:
    """Share of rollouts whose prediction gate fails at 100% (5 windows of 2,000 canary
    requests), after 3 windows at 50% (1,000 requests of each) in which the canary was like
    stable; the gate's share of a 0.2 budget."""
    rng = random.Random(seed)
    limits = GateLimits(false_alarm_rate=0.2)

    def answers(requests: int, shares: dict[str, float]) -> VariantWindow:
        return VariantWindow(requests, predictions={"predictions": _drawn(rng, requests, shares)})

    failed = 0
    for _ in range(rollouts):
        evidence = RolloutEvidence()
        for _ in range(3):
            prediction_gates(Window(answers(1000, SHARES), answers(1000, SHARES)), limits, evidence)
        for _ in range(5):
            results = prediction_gates(
                Window(VariantWindow(), answers(2000, canary)), limits, evidence
            )
            if not all(result.passed for result in results):
                failed += 1
                break
    return failed / rollouts


def test_at_full_weight_predictions_are_held_to_stable_s_earlier_shares() -> None:
    """No stable traffic at 100%: the canary's predictions are tested against stable's shares
    in the windows before (before this, a 100% window said nothing of predictions). A canary
    whose predictions moved at 100% (15% of them from the top bucket to the lowest: PSI 0.2)
    is caught in at least 95% of 200 rollouts (a move of 10%, PSI 0.1, in 86.5%: the PSI of
    the whole rollout, its earlier windows like stable's, must pass `max_psi`); one like stable
    fails no more often than the gate's share of the budget (1,000 rollouts, stable's shares
    estimated from 3,000 predictions)."""
    moved = {"1": 0.25, "2": 0.2, "3": 0.3, "+Inf": 0.25}
    per_thousand = {category: share * 1000 for category, share in SHARES.items()}
    assert psi(per_thousand, {category: share * 1000 for category, share in moved.items()}) > 0.2
    assert _full_weight_failed(moved, rollouts=200, seed=7) >= 0.95
    alpha = GateLimits(false_alarm_rate=0.2).alpha("prediction_psi")
    rate = _full_weight_failed(SHARES, rollouts=1000, seed=8)
    assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / 1000), (rate, alpha)


def _deciles(values: np.ndarray) -> tuple[float, ...]:
    return tuple(np.quantile(values, np.linspace(0.1, 0.9, 9)).tolist())


SHAPES = {
    "skewed": lambda rng: rng.exponential(3.0, 100_000),
    "bimodal": lambda rng: np.concatenate([rng.normal(10, 1, 50_000), rng.normal(30, 2, 50_000)]),
    "0..1": lambda rng: rng.beta(2, 5, 100_000),
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_the_planner_simulates_the_live_model_s_prediction_shape(name: str) -> None:
    """From stable's deciles (as the routers profile them), the simulation draws predictions
    with the same deciles (within 2% of their range), and the plan, run on that shape, rolls
    back no identical twin and still reports how often a shift of half a spread is caught."""
    rng = np.random.default_rng(9)
    deciles = _deciles(SHAPES[name](rng))
    shape = Shape.of(deciles)
    drawn = _deciles(shape.draw(50_000, rng))
    spread = deciles[-1] - deciles[0]
    assert max(abs(a - b) for a, b in zip(drawn, deciles, strict=True)) < 0.02 * spread
    latency = [(0.001, 100.0), (0.005, 950.0), (0.01, 1000.0), (math.inf, 1000.0)]
    measured = Window(VariantWindow(900, 0, latency),
                      VariantWindow(100, 0, [(b, c / 10) for b, c in latency]))  # fmt: skip
    report = plan_report(measured, 10, Traffic(), deciles)
    assert report.prediction_shape == "stable's deciles"
    assert report.false_rollbacks <= 0.02
    shifted = [found for found in report.detections if "+0.5 sd" in found.fault]
    assert shifted and all(found.before_half >= 0.9 for found in shifted), shifted


def test_the_planner_takes_the_stable_version_s_busiest_numeric_output() -> None:
    def profile(version: str, rows: int, deciles: list[float], numeric: bool = True) -> Any:
        output = OutputProfile(rows=rows, numeric=numeric, deciles=deciles, labels=None)
        return PredictionsProfile(instance_id="r", stable_version=version,
                                  outputs={"predictions": output})  # fmt: skip

    wanted = [float(d) for d in range(1, 10)]
    profiles = [profile("1", 500, [0.0] * 9), profile("2", 200, wanted),
                profile("2", 100, [2.0] * 9), profile("2", 900, [], numeric=False)]  # fmt: skip
    assert stable_deciles(profiles, "2") == tuple(wanted)
    assert stable_deciles(profiles, "3") == ()
    with pytest.raises(ValueError, match="nine ordered deciles"):
        Shape.of((3.0, 1.0))
