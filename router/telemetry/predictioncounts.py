"""Counting predictions into the router's metrics as the routing file says, and profiling stable's.

The buckets of a numeric output and the labels of a classifier's output come from the model
(the routing file's `predictions`, cut by the controller from stable's own predictions), never
from one dataset: a model answering probabilities, prices or labels is counted as well as one
answering exam scores. Until they are cut, nothing is counted, and the rollout's verdict says so.

The profile keeps stable's most recent predictions per output, which the controller reads
(`GET /predictions-profile`, deciles and label counts, never single answers) to cut them.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field

from contracts.payloads import OutputProfile
from contracts.routing import Predictions
from router.telemetry.plainmetrics import CounterChild, HistogramChild, PlainCounter, PlainHistogram
from router.telemetry.predictions import Outputs, Value, label_of

PROFILE_ROWS = 2000
"""Stable's most recent predictions kept per output for the profile."""
PROFILE_LABELS = 50
"""Distinct values listed in a profile (more: the output is numeric, or has too many labels)."""
OTHER = "other"
"""The class of labels the routing file does not list."""


@dataclass
class _OutputCounting:
    """One output's way of being counted for one variant."""

    histogram: HistogramChild | None = None
    classes: dict[str, CounterChild] = field(default_factory=dict)


@dataclass
class PredictionCounts:
    """Per variant and output: a histogram at the configured edges, or a count per class."""

    values: PlainHistogram
    classes: PlainCounter
    spec: Predictions | None = None
    stable_version: str = ""
    """The version whose predictions the profile holds (a new stable starts it afresh)."""
    _plan: dict[tuple[str, str], _OutputCounting] = field(default_factory=dict)
    _recent: dict[str, deque[Value]] = field(default_factory=dict)

    def configure(self, spec: Predictions | None, stable_version: str) -> None:
        """Count as `spec` says from now on (after a routing-file reload)."""
        if stable_version != self.stable_version:
            self.stable_version, self._recent = stable_version, {}
        if spec == self.spec:
            return
        self.spec, self._plan = spec, {}
        outputs = spec.outputs if spec is not None else {}
        kept: set[tuple[str, ...]] = set()
        for variant in ("stable", "canary"):
            for name, how in outputs.items():
                counting = _OutputCounting()
                if how.edges is not None:
                    kept.add((variant, name))
                    counting.histogram = self.values.labels_with_bounds(
                        (variant, name), tuple(how.edges)
                    )
                else:
                    for label in (*(how.classes or ()), OTHER):
                        counting.classes[label] = self.classes.labels(variant, name, label)
                self._plan[variant, name] = counting
        self.values.remove_other_than(kept)

    def count(self, variant: str, outputs: Outputs) -> None:
        """Count one answer's predictions; remember stable's for the profile."""
        if variant == "stable":
            self._remember(outputs)
        plan = self._plan
        if not plan:
            return
        for name, values in outputs.items():
            counting = plan.get((variant, name))
            if counting is None:
                continue
            histogram = counting.histogram
            if histogram is not None:
                for value in values:
                    if isinstance(value, float) and value == value:  # not NaN
                        histogram.observe(value)
            else:
                for value in values:
                    child = counting.classes.get(label_of(value)) or counting.classes[OTHER]
                    child.inc()

    def _remember(self, outputs: Outputs) -> None:
        for name, values in outputs.items():
            recent = self._recent.get(name)
            if recent is None:
                if len(self._recent) >= PROFILE_LABELS:
                    continue
                recent = self._recent[name] = deque(maxlen=PROFILE_ROWS)
            recent.extend(values)

    def profile(self) -> dict[str, OutputProfile]:
        """Summarize stable's recent predictions per output: deciles, or labels and counts."""
        summary: dict[str, OutputProfile] = {}
        for name, recent in self._recent.items():
            values = list(recent)
            numbers = sorted(v for v in values if isinstance(v, float) and math.isfinite(v))
            labels = Counter(label_of(value) for value in values)
            summary[name] = OutputProfile(
                rows=len(values),
                numeric=len(numbers) == len(values) and bool(numbers),
                deciles=[_quantile(numbers, q / 10) for q in range(1, 10)] if numbers else [],
                labels=dict(labels.most_common(PROFILE_LABELS))
                if len(labels) <= PROFILE_LABELS
                else None,
            )
        return summary


def _quantile(ordered: list[float], q: float) -> float:
    """Return the q-quantile of sorted numbers, interpolated between neighbours."""
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
