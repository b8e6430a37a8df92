"""Judging a rollout window by window, with a false-alarm rate that holds over the whole rollout.

Each gate is a sequential test (`evidence.Evidence`) that accumulates over every window of the
rollout, plus a practical floor on the size of the difference. A gate fails when both hold:
the evidence has reached `1 / alpha` for the gate's share of the false-alarm budget, and the
difference seen so far is at least the floor (so that a million requests do not fail a canary
for a trivial difference). Requiring both can only lower the false-alarm rate below the
test's. The design, with its error rates, is in docs/rollout-statistics.md.

Pure functions over counts and histogram buckets, and a state that is plain numbers, so every
decision can be replayed from the audit log.
"""

from __future__ import annotations

import math

from controller.rollout.evidence import (
    BOTH_RATIOS,
    Evidence,
    OutputEvidence,
    RolloutEvidence,
    effective,
)
from controller.rollout.histograms import (
    _above,
    _quantile_of,
    _ratio,
    _share,
    _total,
    buckets_of,
    categories_of,
    ordered,
    psi,
    quantile,
    upper_bound,
)
from controller.rollout.judgement import (
    Buckets,
    Categories,
    GateLimits,
    GateResult,
    Verdict,
    Window,
)

SLOW_SHARE_FLOOR = 0.01
"""A canary is slow when more than this share of its answers exceed the latency bound: its
p99 is then above the bound."""


LABEL_BOUND_QUANTILE = 0.9
"""Numeric labels: a labelled row is bad when its error exceeds this quantile of stable's
errors in the windows before (so about 10% of stable's rows are bad by construction)."""


MIN_BOUND_ROWS = 20
"""Stable's labelled rows needed before the first bound is cut from them."""


def summarize_window(window: Window) -> dict[str, dict[str, float | None]]:
    """Return each variant's requests, 5xx share, p50 and p99 (s), and labelled quality.

    Quality: on the rows labelled in the window, the share wrong (classes) or the mean |error|
    (numbers). What a rollout's record in MLflow plots over its windows.
    """
    labels = window.labels
    labelled = {
        "canary": [*labels.canary, *(c for c, _ in labels.pairs)],
        "stable": [*labels.stable, *(s for _, s in labels.pairs)],
    }
    shown: dict[str, dict[str, float | None]] = {}
    for name, variant in (("canary", window.canary), ("stable", window.stable)):
        errors = labelled[name]
        shown[name] = {
            "requests": variant.requests,
            "error_share": variant.errors / variant.requests if variant.requests else None,
            "p50_s": quantile(0.5, variant.latency),
            "p99_s": quantile(0.99, variant.latency),
            "labelled": float(len(errors)),
            "label_error": sum(errors) / len(errors) if errors else None,
        }
    return shown


def judge(window: Window, limits: GateLimits, evidence: RolloutEvidence) -> Verdict:
    """Add the window to the rollout's evidence and judge the rollout so far.

    A window with fewer than `min_requests` canary requests is `insufficient` unless a gate
    already fails: too little data never passes, but a canary shown bad on little data fails.
    """
    gates = [
        error_rate_gate(window, limits, evidence),
        error_ratio_gate(window, limits, evidence),
        latency_gate(window, limits, evidence),
        *prediction_gates(window, limits, evidence),
    ]
    if limits.min_labels > 0:
        gates.append(label_gate(window, limits, evidence))
    if limits.max_shadow_delta is not None and window.shadow_delta_count > 0:
        mean = window.shadow_delta_sum / window.shadow_delta_count
        gates.append(GateResult("shadow_delta", mean, limits.max_shadow_delta,
                                mean <= limits.max_shadow_delta))  # fmt: skip
    if not all(gate.passed for gate in gates):
        outcome = "fail"
    elif window.canary.requests < limits.min_requests:
        outcome = "insufficient"
    else:
        outcome = "pass"
    paired = len(window.labels.pairs)
    labelled = (len(window.labels.canary) + paired, len(window.labels.stable) + paired)
    return Verdict(outcome, gates, window.canary.requests, labelled, summarize_window(window))


def label_gate(window: Window, limits: GateLimits, evidence: RolloutEvidence) -> GateResult:
    """Whether the canary's labelled rows are bad more often than stable's.

    A row is bad when its class is wrong, or (numbers) when its error exceeds a bound cut from
    stable's errors in the windows before: fixed before this window's rows are seen, as the
    latency bound is. Given the window's labelled rows, the canary's bad count is
    hypergeometric with the canary's share of the rows when it is no worse; at 100% the
    canary is tested against an upper bound of stable's bad share before. Rows are tested as
    they are labelled, whichever window their requests were in.

    Shadowed rows, which both models answered, are judged paired (McNemar): of the rows where
    exactly one of the two is bad, each is the canary's with probability 1/2 when it is no
    worse, whatever the rows' difficulty, so hard rows both get wrong cost no evidence. Their
    likelihood ratios join the same evidence (a product of tests each valid under the null).
    """
    labels, needed = window.labels, 1 / limits.alpha("label_errors")
    bound = None
    if not labels.classes and len(evidence.stable_errors) >= MIN_BOUND_ROWS:
        bound = _quantile_of(evidence.stable_errors, LABEL_BOUND_QUANTILE)
    if labels.classes or bound is not None:
        cut = 0.5 if labels.classes else bound
        assert cut is not None  # noqa: S101 (one of the two holds)
        only_canary = sum(c > cut >= s for c, s in labels.pairs)
        only_stable = sum(s > cut >= c for c, s in labels.pairs)
        evidence.label_errors.add(only_canary + only_stable, only_canary, 0.5)
        bad_canary = sum(error > cut for error in labels.canary)
        bad_stable = sum(error > cut for error in labels.stable)
        if labels.stable:
            share = _share(len(labels.canary), len(labels.stable))
            evidence.label_errors.add(bad_canary + bad_stable, bad_canary, share)
        elif labels.canary and evidence.bad_rows.stable_total > 0:
            before = evidence.stable_errors if not labels.classes else []
            bad_before = (sum(error > cut for error in before) if before
                          else evidence.bad_rows.stable_events)  # fmt: skip
            total_before = len(before) if before else evidence.bad_rows.stable_total
            stable_bound = upper_bound(bad_before, total_before,
                                       limits.bound_alpha("label_errors"))  # fmt: skip
            evidence.label_errors.add(len(labels.canary), bad_canary, stable_bound)
        evidence.bad_rows.add(bad_canary, len(labels.canary), bad_stable, len(labels.stable))
        both = sum(c > cut and s > cut for c, s in labels.pairs)
        paired = len(labels.pairs)
        evidence.bad_rows.add(only_canary + both, paired, only_stable + both, paired)
        evidence.pairs += paired
    if not labels.classes:
        evidence.stable_errors.extend([*labels.stable, *(s for _, s in labels.pairs)])
    rows = evidence.bad_rows
    canary_rate, stable_rate = rows.canary_rate(), rows.stable_rate()
    large = canary_rate > 0 and canary_rate >= limits.max_label_error_ratio * stable_rate
    shown = evidence.label_errors.value >= needed and large
    detail = (
        f"{rows.canary_total:.0f} canary and {rows.stable_total:.0f} stable rows judged on"
        f" labels so far ({evidence.pairs} of them shadowed pairs), bad: canary"
        f" {canary_rate:.2%}, stable {stable_rate:.2%}"
        + (f"; error bound {bound:.4g}" if bound is not None else "")
    )
    return GateResult("label_errors", _ratio(canary_rate, stable_rate),
                      limits.max_label_error_ratio, not shown, detail,
                      evidence.label_errors.value, needed)  # fmt: skip


def error_rate_gate(window: Window, limits: GateLimits, evidence: RolloutEvidence) -> GateResult:
    """Test the canary's 5xx share against the fixed `max_error_rate` (one-sample)."""
    canary = window.canary
    evidence.error_rate.add(canary.requests, canary.errors, limits.max_error_rate)
    evidence.errors.add(canary.errors, canary.requests, window.stable.errors,
                        window.stable.requests)  # fmt: skip
    rate, needed = evidence.errors.canary_rate(), 1 / limits.alpha("error_rate")
    shown = evidence.error_rate.value >= needed
    return GateResult(
        "error_rate", rate, limits.max_error_rate, not shown,
        f"{evidence.errors.canary_events:.0f} of {evidence.errors.canary_total:.0f} canary"
        " requests so far", evidence.error_rate.value, needed,
    )  # fmt: skip


def error_ratio_gate(window: Window, limits: GateLimits, evidence: RolloutEvidence) -> GateResult:
    """Test the canary's 5xx share against stable's.

    In the same windows while stable has traffic; at 100%, against an upper bound of stable's
    share in the windows before.
    """
    canary, stable = window.canary, window.stable
    tally, needed = evidence.errors, 1 / limits.alpha("error_ratio")
    if stable.requests > 0:
        share = _share(canary.requests, stable.requests)
        evidence.error_ratio.add(canary.errors + stable.errors, canary.errors, share)
    elif tally.stable_total > 0:
        bound = upper_bound(tally.stable_events, tally.stable_total,
                            limits.bound_alpha("error_ratio"))  # fmt: skip
        evidence.error_ratio.add(canary.requests, canary.errors, bound)
    canary_rate, stable_rate = tally.canary_rate(), tally.stable_rate()
    large = canary_rate > 0 and canary_rate >= limits.min_error_ratio * stable_rate
    shown = evidence.error_ratio.value >= needed and large
    return GateResult(
        "error_ratio", _ratio(canary_rate, stable_rate), limits.min_error_ratio, not shown,
        f"canary {tally.canary_rate():.4f}, stable {tally.stable_rate():.4f}",
        evidence.error_ratio.value, needed,
    )  # fmt: skip


def latency_gate(window: Window, limits: GateLimits, evidence: RolloutEvidence) -> GateResult:
    """How often the canary's answers exceed a latency bound, against stable's.

    The bound comes from stable's latencies in the windows before this one (its p99 times
    `max_p99_ratio`, or plus `p99_tolerance_s`, whichever is later), rounded up to a bucket
    bound: fixed before the window's answers are seen, it cannot bias the test. (Cut from this
    window's answers, pooled, a canary slow on more than 1% of the traffic would drag the bound
    up past itself; cut from stable's alone, stable would be under it by construction.) The
    rollout starts with stable's latency before it (`RolloutEngine.start`); without that
    history, the first window only sets the bound.
    """
    needed = 1 / limits.alpha("p99_ratio")
    stable_before = buckets_of(evidence.stable_latency)
    bound = latency_bound(stable_before, limits)
    if bound is not None:
        slow_canary = _above(window.canary.latency, bound)
        slow_stable = _above(window.stable.latency, bound)
        answered = _total(window.stable.latency)
        if answered > 0:
            share = _share(_total(window.canary.latency), answered)
            evidence.latency.add(slow_canary + slow_stable, slow_canary, share)
        else:  # at 100%: against an upper bound of stable's share over the bound before
            slow_before = upper_bound(_above(stable_before, bound), _total(stable_before),
                                      limits.bound_alpha("p99_ratio"))  # fmt: skip
            evidence.latency.add(_total(window.canary.latency), slow_canary, slow_before)
        evidence.slow.add(slow_canary, _total(window.canary.latency), slow_stable, answered)
    for category, count in categories_of(window.stable.latency).items():
        evidence.stable_latency[category] = evidence.stable_latency.get(category, 0.0) + count
    slow = evidence.slow
    shown = evidence.latency.value >= needed and slow.canary_rate() > SLOW_SHARE_FLOOR
    canary_p99 = quantile(0.99, window.canary.latency)
    stable_p99 = quantile(0.99, window.stable.latency)
    detail = (
        f"answers over the bound so far: canary {slow.canary_rate():.2%}, stable"
        f" {slow.stable_rate():.2%}"
        + (f"; this window's bound {bound * 1000:g} ms" if bound is not None else "")
        + (f", p99 canary {canary_p99 * 1000:.1f} ms, stable {stable_p99 * 1000:.1f} ms"
           if canary_p99 is not None and stable_p99 is not None else "")
    )  # fmt: skip
    ratio = _ratio(canary_p99 or 0.0, stable_p99 or 0.0)
    return GateResult("p99_ratio", ratio, limits.max_p99_ratio, not shown, detail,
                      evidence.latency.value, needed)  # fmt: skip


def latency_bound(stable: Buckets, limits: GateLimits) -> float | None:
    """Return the latency bound for stable's latencies: a bucket's upper bound, or None."""
    p99 = quantile(0.99, stable)
    if p99 is None:
        return None
    target = max(p99 * limits.max_p99_ratio, p99 + limits.p99_tolerance_s)
    bounds = [bound for bound, _ in stable if bound >= target and not math.isinf(bound)]
    return bounds[0] if bounds else None


def prediction_gates(
    window: Window, limits: GateLimits, evidence: RolloutEvidence
) -> list[GateResult]:
    """Judge each model output: do the canary's predictions fall in other proportions.

    A K-category count is tested as K-1 nested binary events, as a stick is broken: the first
    category among all predictions, the second among the rest, and so on. Given the window's
    totals, each step's canary count is hypergeometric given the steps before, so each step's
    likelihood ratio keeps the bound and their product is one test of the whole distribution.
    """
    names = sorted(set(window.canary.predictions) | set(window.stable.predictions)
                   | set(evidence.outputs))  # fmt: skip
    if not names:
        return [GateResult(
            "prediction_psi", None, limits.max_psi, True,
            "no usable predictions: the answers carry no numbers or class labels the router"
            " counts, so predictions are not judged",
        )]  # fmt: skip
    rows = _rows_per_request(window)
    needed = 1 / limits.alpha("prediction_psi", len(names))
    results = []
    for name in names:
        output = evidence.outputs.setdefault(name, OutputEvidence())
        canary = window.canary.predictions.get(name, {})
        stable = window.stable.predictions.get(name, {})
        _add_categories(output, canary, stable, rows)
        shift = psi(output.stable, output.canary)
        value = output.value()
        shown = value >= needed and shift is not None and shift >= limits.max_psi
        gate = "prediction_psi" if name == "predictions" else f"prediction_psi:{name}"
        detail = (
            f"{sum(output.canary.values()):.0f} canary and {sum(output.stable.values()):.0f}"
            f" stable predictions over {len(output.canary.keys() | output.stable.keys())}"
            " buckets or classes so far"
        )
        results.append(GateResult(gate, shift, limits.max_psi, not shown, detail, value, needed))
    return results


def _add_categories(output: OutputEvidence, canary: Categories, stable: Categories,
                    rows: float) -> None:  # fmt: skip
    """Count one window of one output into its tally and its per-category tests."""
    for category, count in canary.items():
        output.canary[category] = output.canary.get(category, 0.0) + count
    for category, count in stable.items():
        output.stable[category] = output.stable.get(category, 0.0) + count
    remaining_canary = sum(canary.values())
    remaining = remaining_canary + sum(stable.values())
    if not stable and remaining_canary > 0:
        _add_against_history(output, canary, rows)
        return
    for category in ordered(canary.keys() | stable.keys())[:-1]:
        in_canary = canary.get(category, 0.0)
        events = in_canary + stable.get(category, 0.0)
        test = output.tests.setdefault(category, Evidence(BOTH_RATIOS))
        test.add(effective(events, rows), effective(in_canary, rows),
                 _share(remaining_canary, remaining - remaining_canary))  # fmt: skip
        remaining_canary -= in_canary
        remaining -= events


def _add_against_history(output: OutputEvidence, canary: Categories, rows: float) -> None:
    """Test the canary's categories against stable's proportions in the windows before.

    At 100% there is no stable traffic in the window: one-sample tests of fixed rates.

    Each step of the broken stick asks how many of the canary's remaining predictions fall in
    the category, against stable's share of its remaining ones. Stable's shares are estimates;
    the gate also needs a PSI of `max_psi` against them, which their noise does not reach
    (false alarms simulated in tests/test_rollout_gates.py).
    """
    history = {category: count for category, count in output.stable.items() if count > 0}
    before = sum(history.values())
    if before <= 0:
        return  # no stable predictions before: nothing to hold the canary to
    remaining_canary = sum(canary.values())
    remaining_stable = before
    for category in ordered(canary.keys() | history.keys())[:-1]:
        in_canary, in_stable = canary.get(category, 0.0), history.get(category, 0.0)
        test = output.tests.setdefault(category, Evidence(BOTH_RATIOS))
        if remaining_stable > 0:  # smoothed: a class stable never gave is still a rate
            share = (in_stable + 0.5) / (remaining_stable + 1.0)
            test.add(effective(remaining_canary, rows), effective(in_canary, rows), share)
        remaining_canary -= in_canary
        remaining_stable -= in_stable


def _rows_per_request(window: Window) -> float:
    """Mean predictions per request (batches), over both variants, of the first output."""
    names = sorted(window.canary.predictions.keys() | window.stable.predictions.keys())
    requests = window.canary.requests + window.stable.requests
    if not names or requests <= 0:
        return 1.0
    rows = sum(sum(v.predictions.get(names[0], {}).values())
               for v in (window.canary, window.stable))  # fmt: skip
    return max(rows / requests, 1.0)
