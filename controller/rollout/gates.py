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
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from controller.rollout.evidence import BOTH_RATIOS, UP_RATIOS, Evidence, effective

Buckets = list[tuple[float, float]]
"""Cumulative histogram buckets: (upper bound, observations at or below it), +Inf last."""
Categories = dict[str, float]
"""One output's predictions as counts: per histogram bucket (named by its upper bound, `+Inf`
last) for numbers, or per class label."""
SLOW_SHARE_FLOOR = 0.01
"""A canary is slow when more than this share of its answers exceed the latency bound: its
p99 is then above the bound."""
STABLE_BOUND_SHARE = 0.1
"""Of a gate comparing the canary with stable, the share of its alpha spent on bounding
stable's rate from the earlier windows, for windows at 100% (no stable traffic to compare
with): the canary is then tested against that upper bound, a one-sample test."""
BOUNDED_GATES = ("error_ratio", "p99_ratio", "label_errors")
"""The gates that compare the canary with stable, and so spend part of their alpha that way."""
LABEL_BOUND_QUANTILE = 0.9
"""Numeric labels: a labelled row is bad when its error exceeds this quantile of stable's
errors in the windows before (so about 10% of stable's rows are bad by construction)."""
MIN_BOUND_ROWS = 20
"""Stable's labelled rows needed before the first bound is cut from them."""
SMOOTHING = 0.5
"""Added to every category's count in the PSI (Jeffreys): an empty bucket in a small sample
is not a shift."""


@dataclass(frozen=True)
class VariantWindow:
    """What one variant did during a window."""

    requests: float = 0.0
    errors: float = 0.0
    """Answers with a 5xx status."""
    latency: Buckets = field(default_factory=list)
    predictions: dict[str, Categories] = field(default_factory=dict)
    """By model output (a column name, or `predictions` for a single output)."""


@dataclass(frozen=True)
class LabelledRows:
    """Rows of each variant whose labels arrived during a window: each row's error.

    For numbers, |prediction - label|; for classes, 1 for a wrong prediction and 0 for a right
    one (then `classes` is true).
    """

    canary: tuple[float, ...] = ()
    stable: tuple[float, ...] = ()
    classes: bool = False
    pairs: tuple[tuple[float, float], ...] = ()
    """Rows both answered, stable to the client and the canary as its shadow: (canary's error,
    stable's error) on the same row. Not in `canary` or `stable`."""


@dataclass(frozen=True)
class Window:
    """Both variants over one interval, and the shadow comparisons made in it."""

    stable: VariantWindow
    canary: VariantWindow
    shadow_delta_sum: float = 0.0
    shadow_delta_count: float = 0.0
    labels: LabelledRows = field(default_factory=LabelledRows)


@dataclass(frozen=True)
class GateLimits:
    """What a canary must keep to pass (defaults documented in the README)."""

    min_requests: int = 50
    """Canary requests a window needs to pass (fewer: insufficient, the weight holds)."""
    false_alarm_rate: float = 0.01
    """Chance that a canary no worse than stable is rolled back, over the whole rollout."""
    max_error_rate: float = 0.01
    """The canary's 5xx share must not be shown above this, whatever stable's is..."""
    min_error_ratio: float = 1.5
    """...nor shown above stable's by at least this factor."""
    max_p99_ratio: float = 1.5
    """Latency bound: this multiple of stable's p99 in the windows so far..."""
    p99_tolerance_s: float = 0.005
    """...or that p99 plus this many seconds, whichever is later; the canary fails when its
    answers exceed the bound significantly more often than stable's, and its p99 is above it."""
    max_psi: float = 0.05
    """Predictions: smallest shift (population stability index) that fails a canary, when the
    shift is also significant."""
    max_shadow_delta: float | None = None
    """Mean absolute shadow delta, when shadowing is on (None: not judged)."""
    min_labels: int = 0
    """Labelled canary rows a step needs before it may pass (0: labels are not judged)."""
    max_label_error_ratio: float = 1.5
    """The canary fails on labels when its rows are bad (wrong class, or an error above
    stable's usual) significantly more often than stable's, and at least this many times as
    often."""

    def alpha(self, gate: str, outputs: int = 1) -> float:
        """Return the gate's share of the false-alarm budget (Bonferroni over the gates).

        Errors and latency a quarter each (the error quarter split between its two tests),
        predictions half, split over the model's outputs. With labels judged, the labels gate
        takes half of the predictions' share.
        """
        shares = {"error_rate": 1 / 8, "error_ratio": 1 / 8, "p99_ratio": 1 / 4}
        labelled = self.min_labels > 0
        if gate == "label_errors":
            return self.false_alarm_rate / 4 * (1 - STABLE_BOUND_SHARE)
        predictions = 1 / (4 if labelled else 2) / max(outputs, 1)
        share = self.false_alarm_rate * shares.get(gate, predictions)
        return share * (1 - STABLE_BOUND_SHARE) if gate in BOUNDED_GATES else share

    def bound_alpha(self, gate: str) -> float:
        """Return the alpha of the upper bound on stable's rate used at 100% by `gate`."""
        return self.alpha(gate) / (1 - STABLE_BOUND_SHARE) * STABLE_BOUND_SHARE


@dataclass(frozen=True)
class GateResult:
    """One gate: the difference seen so far against its floor, and the evidence for it."""

    gate: str
    value: float | None
    """The difference so far (the gate's own measure; None before there is data)."""
    limit: float
    """The floor `value` must reach to fail."""
    passed: bool
    detail: str = ""
    evidence: float | None = None
    """The sequential test's e-value over the rollout so far (None: judged per window)..."""
    needed: float | None = None
    """...and the value at which it rejects (1 / the gate's alpha)."""


@dataclass(frozen=True)
class Verdict:
    """The window's outcome: pass, fail, or insufficient data; with every gate's numbers."""

    outcome: str
    """`pass`, `fail`, `insufficient` (too little traffic) or `waiting` (for labels)."""
    gates: list[GateResult]
    canary_requests: float
    labelled: tuple[int, int] = (0, 0)
    """Rows labelled in this window: canary's, stable's."""
    variants: dict[str, dict[str, float | None]] = field(default_factory=dict)
    """What each variant did in the window (`summarize_window`), for the verdict's record."""


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


@dataclass
class Tally:
    """Events and totals per variant since the rollout began (for the size of a difference)."""

    canary_events: float = 0.0
    canary_total: float = 0.0
    stable_events: float = 0.0
    stable_total: float = 0.0

    def add(self, canary_events: float, canary_total: float,
            stable_events: float, stable_total: float) -> None:  # fmt: skip
        """Count one window."""
        self.canary_events += canary_events
        self.canary_total += canary_total
        self.stable_events += stable_events
        self.stable_total += stable_total

    def canary_rate(self) -> float:
        """Return the canary's share of events (0 before it has any traffic)."""
        return self.canary_events / self.canary_total if self.canary_total else 0.0

    def stable_rate(self) -> float:
        """Return stable's share of events (0 before it has any traffic)."""
        return self.stable_events / self.stable_total if self.stable_total else 0.0


@dataclass
class OutputEvidence:
    """One model output's prediction counts so far and the test of each category."""

    canary: Categories = field(default_factory=dict)
    stable: Categories = field(default_factory=dict)
    tests: dict[str, Evidence] = field(default_factory=dict)

    def value(self) -> float:
        """Return the product of the categories' e-values (factors of one likelihood ratio)."""
        values = [test.value for test in self.tests.values()]
        logs = sum(math.log(value) for value in values if value > 0)
        return math.exp(min(logs, 700.0))


@dataclass
class RolloutEvidence:
    """Everything the gates have accumulated since the rollout began (saved with its state)."""

    error_rate: Evidence = field(default_factory=Evidence)
    error_ratio: Evidence = field(default_factory=Evidence)
    latency: Evidence = field(default_factory=Evidence)
    errors: Tally = field(default_factory=Tally)
    slow: Tally = field(default_factory=Tally)
    stable_latency: Categories = field(default_factory=dict)
    """Stable's latency buckets over the windows so far (the latency bound's source)."""
    outputs: dict[str, OutputEvidence] = field(default_factory=dict)
    label_errors: Evidence = field(default_factory=Evidence)
    bad_rows: Tally = field(default_factory=Tally)
    """Labelled rows found bad, and all labelled rows, per variant."""
    stable_errors: list[float] = field(default_factory=list)
    """Stable's labelled errors so far (numbers): the bound's source."""
    pairs: int = 0
    """Labelled rows both variants answered (shadowed), judged paired."""

    def to_json(self) -> dict[str, Any]:
        """Return the state as JSON-able data."""
        return {
            "error_rate": self.error_rate.to_json(),
            "error_ratio": self.error_ratio.to_json(),
            "latency": self.latency.to_json(),
            "errors": vars(self.errors), "slow": vars(self.slow),
            "stable_latency": self.stable_latency,
            "outputs": {
                name: {"canary": output.canary, "stable": output.stable,
                       "tests": {c: test.to_json() for c, test in output.tests.items()}}
                for name, output in self.outputs.items()
            },
            "label_errors": self.label_errors.to_json(), "bad_rows": vars(self.bad_rows),
            "stable_errors": self.stable_errors, "pairs": self.pairs,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RolloutEvidence:
        """Rebuild what `to_json` saved (missing parts start afresh)."""
        return cls(
            error_rate=Evidence.from_json(data.get("error_rate", []), UP_RATIOS),
            error_ratio=Evidence.from_json(data.get("error_ratio", []), UP_RATIOS),
            latency=Evidence.from_json(data.get("latency", []), UP_RATIOS),
            errors=Tally(**data.get("errors", {})),
            slow=Tally(**data.get("slow", {})),
            stable_latency=dict(data.get("stable_latency", {})),
            outputs={
                name: OutputEvidence(
                    dict(output["canary"]),
                    dict(output["stable"]),
                    {
                        c: Evidence.from_json(logs, BOTH_RATIOS)
                        for c, logs in output["tests"].items()
                    },
                )
                for name, output in data.get("outputs", {}).items()
            },
            label_errors=Evidence.from_json(data.get("label_errors", []), UP_RATIOS),
            bad_rows=Tally(**data.get("bad_rows", {})),
            stable_errors=list(data.get("stable_errors", [])),
            pairs=int(data.get("pairs", 0)),
        )


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


def _quantile_of(values: list[float], q: float) -> float:
    ordered_values = sorted(values)
    return ordered_values[min(int(q * len(ordered_values)), len(ordered_values) - 1)]


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
    first window only sets the bound.
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
    for category in ordered(canary.keys() | stable.keys())[:-1]:
        in_canary = canary.get(category, 0.0)
        events = in_canary + stable.get(category, 0.0)
        test = output.tests.setdefault(category, Evidence(BOTH_RATIOS))
        test.add(effective(events, rows), effective(in_canary, rows),
                 _share(remaining_canary, remaining - remaining_canary))  # fmt: skip
        remaining_canary -= in_canary
        remaining -= events


def ordered(categories: Iterable[str]) -> list[str]:
    """Buckets by their bound (`+Inf` last), then class labels in text order."""

    def key(category: str) -> tuple[int, float, str]:
        try:
            return (0, float(category), "")
        except ValueError:
            return (1, 0.0, category)

    return sorted(categories, key=key)


def _rows_per_request(window: Window) -> float:
    """Mean predictions per request (batches), over both variants, of the first output."""
    names = sorted(window.canary.predictions.keys() | window.stable.predictions.keys())
    requests = window.canary.requests + window.stable.requests
    if not names or requests <= 0:
        return 1.0
    rows = sum(sum(v.predictions.get(names[0], {}).values())
               for v in (window.canary, window.stable))  # fmt: skip
    return max(rows / requests, 1.0)


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
