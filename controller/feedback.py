"""Labels that arrive late, joined with the prediction log by request id; quality per variant.

A label names a request id the prediction log holds and gives the true value (one, or a list
with one per row of the request). A batch is taken whole or not at all: a wrong shape or type
is 400, an id the log does not hold 404, an id already labelled (or twice in the batch) 409,
each naming the items. Taken labels are appended to `labels.jsonl` in the state folder in one
fsynced write, and counted into each variant's and version's quality: for numbers, MAE, RMSE
and bias (mean of prediction - label); for classes (strings, booleans), accuracy. A restarted
controller reads both logs again, so its figures are the same.

The prediction log is read incrementally (each file from where the last read stopped, whole
lines only); its ids are held in memory (about 200 bytes a record), which suits one machine's
log: the note on issue 17 says what is left for larger ones.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from common.predictionlog import Prediction, parse_line
from controller.errors import LabelsRefused

MAX_ITEMS = 10_000
Label = float | str | bool


@dataclass(frozen=True)
class LabelledRow:
    """One row's prediction against its label, in the order labels were taken."""

    variant: str
    version: str
    error: float
    """Prediction - label for numbers; for classes 1 when wrong, 0 when right."""
    classes: bool

    @classmethod
    def of(cls, variant: str, version: str, predicted: Any, label: Label) -> LabelledRow:
        """Compare a prediction with its label: numbers when both are, else as classes."""
        value = _number(predicted)
        if isinstance(label, bool | str) or value is None:
            wrong = str(predicted).lower() != str(label).lower()
            return cls(variant, version, float(wrong), True)
        return cls(variant, version, value - float(label), False)


@dataclass
class Quality:
    """What the labels say of one variant's version so far."""

    labels: int = 0
    numeric: int = 0
    absolute: float = 0.0
    squared: float = 0.0
    signed: float = 0.0
    classified: int = 0
    correct: int = 0

    def add(self, row: LabelledRow) -> None:
        """Count one labelled row."""
        self.labels += 1
        if row.classes:
            self.classified += 1
            self.correct += row.error == 0
            return
        self.numeric += 1
        self.absolute += abs(row.error)
        self.squared += row.error * row.error
        self.signed += row.error

    def to_json(self) -> dict[str, float | int | None]:
        """Return the figures (None where no label of that kind came)."""
        n = self.numeric
        return {
            "labels": self.labels,
            "mae": self.absolute / n if n else None,
            "rmse": math.sqrt(self.squared / n) if n else None,
            "bias": self.signed / n if n else None,
            "accuracy": self.correct / self.classified if self.classified else None,
        }


@dataclass
class LabelBook:
    """The labels taken so far, the logged predictions they join, and the quality they give."""

    predictions_folder: Path
    labels_path: Path
    registry: CollectorRegistry | None = None
    logged: dict[str, Prediction] = field(default_factory=dict)
    read_to: dict[Path, int] = field(default_factory=dict)
    labelled: set[str] = field(default_factory=set)
    quality: dict[tuple[str, str], Quality] = field(default_factory=dict)
    rows: list[LabelledRow] = field(default_factory=list)
    """Every labelled row, in the order taken (rollouts read the rows taken since they last
    looked)."""

    def __post_init__(self) -> None:
        """Register the gauges and count the labels a previous controller took."""
        self.gauge = Gauge(
            "mlcanary_quality", "Quality on labelled requests by variant, version and measure.",
            ["variant", "version", "measure"], registry=self.registry,
        )  # fmt: skip
        self.read_log()
        try:
            lines = self.labels_path.read_bytes().splitlines()
        except FileNotFoundError:
            lines = []
        for line in lines:
            try:
                item = json.loads(line)
                self._count(str(item["request_id"]), item["label"])
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by a crash: never acknowledged
        self._show()

    def read_log(self) -> None:
        """Take in the records appended to the prediction log since the last read."""
        for path in sorted(self.predictions_folder.glob("*/*.jsonl")):
            start = self.read_to.get(path, 0)
            with path.open("rb") as handle:
                handle.seek(start)
                data = handle.read()
            complete = data[: data.rfind(b"\n") + 1]
            self.read_to[path] = start + len(complete)
            for line in complete.splitlines():
                record = parse_line(line)
                if record is not None:
                    self.logged[record.request_id] = record

    def take(self, document: Any) -> dict[str, Any]:
        """Check a batch of labels, keep it whole (or raise LabelsRefused), return the counts."""
        items = _items(document)
        ids = [item[0] for item in items]
        repeated = sorted({i for i in ids if ids.count(i) > 1} | (set(ids) & self.labelled))
        if repeated:
            message = f"already labelled: {_some(repeated)}; nothing was kept"
            raise LabelsRefused(409, "RESOURCE_ALREADY_EXISTS", message)
        unknown = [i for i in ids if i not in self.logged]
        if unknown:
            self.read_log()
            unknown = [i for i in ids if i not in self.logged]
        if unknown:
            raise LabelsRefused(
                404, "RESOURCE_DOES_NOT_EXIST",
                f"not in the prediction log: {_some(unknown)} (only logged requests can be"
                " labelled: see the routing file's log.percent); nothing was kept",
            )  # fmt: skip
        for index, (request_id, label) in enumerate(items):
            rows = _rows(self.logged[request_id].predictions)
            if isinstance(label, list) and len(label) != len(rows):
                raise LabelsRefused(
                    400, "INVALID_PARAMETER_VALUE",
                    f"[{index}].label: {len(label)} labels for a request of {len(rows)} rows;"
                    " nothing was kept",
                )  # fmt: skip
        lines = b"".join(
            json.dumps({"request_id": i, "label": label}).encode() + b"\n" for i, label in items
        )
        self.labels_path.parent.mkdir(parents=True, exist_ok=True)
        with self.labels_path.open("ab") as handle:
            handle.write(lines)
            handle.flush()
            os.fsync(handle.fileno())
        for request_id, label in items:
            self._count(request_id, label)
        self._show()
        return {"accepted": len(items), "quality": self.report()}

    def report(self) -> dict[str, dict[str, dict[str, float | int | None]]]:
        """Return the quality by variant, then version."""
        shown: dict[str, dict[str, dict[str, float | int | None]]] = {}
        for (variant, version), quality in sorted(self.quality.items()):
            shown.setdefault(variant, {})[version] = quality.to_json()
        return shown

    def _count(self, request_id: str, label: Any) -> None:
        record = self.logged.get(request_id)
        if record is None or request_id in self.labelled:
            return
        self.labelled.add(request_id)
        quality = self.quality.setdefault((record.variant, record.version), Quality())
        rows = _rows(record.predictions)
        labels = label if isinstance(label, list) else [label] * len(rows)
        for predicted, truth in zip(rows, labels, strict=False):
            row = LabelledRow.of(record.variant, record.version, predicted, truth)
            quality.add(row)
            self.rows.append(row)

    def _show(self) -> None:
        for (variant, version), quality in self.quality.items():
            for measure, value in quality.to_json().items():
                if value is not None:
                    self.gauge.labels(variant, version, measure).set(value)


def _items(document: Any) -> list[tuple[str, Any]]:
    """Return (request id, label) pairs of a body: one object or a list of them (else 400)."""
    listed = document if isinstance(document, list) else [document]
    if not listed or len(listed) > MAX_ITEMS:
        raise LabelsRefused(400, "INVALID_PARAMETER_VALUE",
                            f"send 1 to {MAX_ITEMS} labels, got {len(listed)}")  # fmt: skip
    items, problems = [], []
    for index, item in enumerate(listed):
        where = f"[{index}]" if isinstance(document, list) else "(body)"
        if not isinstance(item, dict) or set(item) != {"request_id", "label"}:
            problems.append(f"{where}: must be an object with request_id and label only")
            continue
        request_id, label = item["request_id"], item["label"]
        if not isinstance(request_id, str) or not request_id:
            problems.append(f"{where}.request_id: must be a non-empty string")
        elif not _label_ok(label):
            problems.append(f"{where}.label: must be a number, a string, a boolean or a list"
                            " of them (one per row)")  # fmt: skip
        else:
            items.append((request_id, label))
    if problems:
        raise LabelsRefused(400, "INVALID_PARAMETER_VALUE",
                            f"{_some(problems)}; nothing was kept")  # fmt: skip
    return items


def _label_ok(label: Any) -> bool:
    if isinstance(label, list):
        return bool(label) and all(_label_ok(item) and not isinstance(item, list) for item in label)
    if isinstance(label, float):
        return math.isfinite(label)
    return isinstance(label, int | str | bool)


def _rows(predictions: Any) -> list[Any]:
    """One prediction per row: a list's items, a frame's first column, else the whole."""
    if isinstance(predictions, list):
        return [_first_output(row) for row in predictions]
    if isinstance(predictions, dict) and predictions:
        first = next(iter(predictions.values()))
        return list(first) if isinstance(first, list) else [first]
    return [predictions]


def _first_output(row: Any) -> Any:
    if isinstance(row, dict) and row:
        return next(iter(row.values()))
    if isinstance(row, list) and len(row) == 1:
        return row[0]
    return row


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _some(names: list[str]) -> str:
    shown = ", ".join(str(name) for name in names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")
