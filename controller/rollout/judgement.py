"""What a rollout judges and what the judging says: windows of counts, limits, results.

Plain frozen data, shared by the gates, the engine, the simulator and the readers of windows
(routers' /metrics, Prometheus).
"""

from __future__ import annotations

from dataclasses import dataclass, field

STABLE_BOUND_SHARE = 0.1
"""Of a gate comparing the canary with stable, the share of its alpha spent on bounding
stable's rate from the earlier windows, for windows at 100% (no stable traffic to compare
with): the canary is then tested against that upper bound, a one-sample test."""
BOUNDED_GATES = ("error_ratio", "p99_ratio", "label_errors")
"""The gates that compare the canary with stable, and so spend part of their alpha that way."""

Buckets = list[tuple[float, float]]
"""Cumulative histogram buckets: (upper bound, observations at or below it), +Inf last."""
Categories = dict[str, float]
"""One output's predictions as counts: per histogram bucket (named by its upper bound, `+Inf`
last) for numbers, or per class label."""


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
