"""Always-valid evidence that the canary does something more (or less) often than stable.

Every rollout gate reduces to counting events (a 5xx, an answer slower than a bound, a
prediction in a bucket or of a class) in both variants. If the canary is no different, each
event is the canary's with probability `share`, the canary's part of the window's traffic:
given the window's totals, the canary's event count is hypergeometric, which Hoeffding (1963,
Thm. 4) shows is less spread than Binomial(events, share). Under an alternative where the
canary has the event `ratio` times as often per request, the event is the canary's with
probability `share * ratio / (share * ratio + 1 - share)`.

`Evidence` keeps, for each ratio of a fixed grid, the log likelihood ratio of the counts seen
so far under that ratio against ratio 1, and reports their average: a mixture likelihood ratio
(Robbins' mSPRT). Under the null its expectation never exceeds 1, window after window, so by
Ville's inequality it ever reaches `1 / alpha` with probability at most `alpha`, however many
windows are looked at. That is what lets a rollout judge after every window with a fixed false
alarm rate, where a fixed-level test repeated over ten windows would false-alarm ten times as
often. The same class tests one variant's rate against a fixed rate (`share` = that rate).

See docs/rollout-statistics.md for the design, and bench/judge.py for the error rates it has.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from controller.rollout.judgement import Categories

UP_RATIOS = (1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 100.0)
"""The alternatives mixed, as multiples of the null's per-request rate: from the smallest
difference worth finding to a canary failing almost everything; evenly weighted, the mixture
costs log(8) ~ 2.1 nats of evidence against knowing the true ratio in advance."""
BOTH_RATIOS = tuple(sorted((*UP_RATIOS, *(1 / ratio for ratio in UP_RATIOS))))
"""Both directions: a prediction bucket or class the canary fills more or less often."""


@dataclass
class Evidence:
    """The mixture likelihood ratio of one event count, accumulated over windows."""

    ratios: tuple[float, ...] = UP_RATIOS
    log_ratios: list[float] = field(default_factory=list)
    """Per ratio of the grid: the log likelihood ratio summed over the windows so far."""

    def __post_init__(self) -> None:
        """Start from no evidence (a likelihood ratio of 1 for each alternative)."""
        if not self.log_ratios:
            self.log_ratios = [0.0] * len(self.ratios)

    def add(self, events: float, canary_events: float, share: float) -> None:
        """Count one window: `canary_events` of `events`, when the canary's part is `share`.

        Counts may be fractional (divided by a batch's rows, see `effective`). A window with
        no events, or a share of 0 or 1 (one variant had all the traffic), says nothing.
        """
        if events <= 0 or not 0 < share < 1:
            return
        canary_events = min(max(canary_events, 0.0), events)
        others = events - canary_events
        for index, ratio in enumerate(self.ratios):
            alternative = share * ratio / (share * ratio + 1 - share)
            self.log_ratios[index] += canary_events * math.log(alternative / share) + (
                others * math.log((1 - alternative) / (1 - share))
            )

    @property
    def value(self) -> float:
        """The e-value: how many times likelier the counts are under a difference than not."""
        logs = [min(log, 700.0) for log in self.log_ratios]  # far past any threshold, finite
        return sum(math.exp(log) for log in logs) / len(logs)

    def to_json(self) -> list[float]:
        """Return the state (the per-ratio sums) for the rollout's saved state."""
        return list(self.log_ratios)

    @classmethod
    def from_json(cls, saved: Sequence[float], ratios: tuple[float, ...]) -> Evidence:
        """Rebuild from `to_json`; a saved state of another grid starts afresh."""
        logs = [float(value) for value in saved]
        return cls(ratios, logs if len(logs) == len(ratios) else [])


def effective(count: float, rows_per_request: float) -> float:
    """Count a batch request's rows as one: the rows of one request share its variant.

    Under the null, requests, not rows, are assigned to variants at random; rows of one batch
    move together, so counting each as independent would overstate the evidence by up to the
    batch size. Dividing by the mean rows per request is the worst case (the rows of a batch
    all alike), which keeps the false-alarm bound whatever the clients send.
    """
    return count / rows_per_request if rows_per_request > 1 else count


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
