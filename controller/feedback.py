"""Labels that arrive late, joined with the prediction log by request id; quality per variant.

A label names a request id the prediction log holds and gives the true value (one, or a list
with one per row of the request). A batch is taken whole or not at all: a wrong shape or type
is 400, an id the log does not hold 404, an id already labelled (or twice in the batch) 409,
each naming the items. Taken labels are appended to `labels.jsonl` in the state folder in one
fsynced write, and counted into each variant's and version's quality: for numbers, MAE, RMSE
and bias (mean of prediction - label); for classes (strings, booleans), accuracy; and log loss
where the model answered probabilities (`controller.quality`). A restarted controller reads both
logs again, so its figures are the same.

A request the router shadowed has two answers in the log: stable's, sent to the client, and
the canary's (variant `shadow`). Its label is counted for both, the canary's rows paired with
stable's (the labels gate judges pairs with a paired test), and the shadow answers' quality is
reported as variant `shadow`. A shadow answer logged after its request was labelled is not
counted (the log is read before every batch, so it is one answered after its label came).

The prediction log's answers are held by `controller.answers` (compact, bounded, streamed).
Nothing a label holds can take the controller down: every label is checked (finite numbers
within 1e150, short strings) and every row compared before the batch is written; a stored
line a restart cannot count is skipped and counted.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from common.files import PRIVATE_FILE, append_fsynced, write_atomically
from contracts.labels import MAX_LABELS
from controller.answers import DEFAULT_LIMIT, LoggedAnswers
from controller.errors import LabelsRefused
from controller.quality import Label, LabelledRow, Quality, compared, rows_of

log = logging.getLogger("controller")

REFUSALS = ("invalid", "too_large", "unknown", "repeated", "ambiguous")
"""Why a batch of labels was refused: a bad item, over the size bound, an id the log does not
hold (never issued, or not logged), an id labelled already, an id the log holds several answers
for (a log written before the router issued every id itself)."""
MAX_LABEL_TEXT = 1000
"""The longest class label taken (a class name, not a document)."""
MAX_ROWS = 1_000_000
"""Labelled rows kept for rollouts to read (the newest): a rollout reads them each window."""
HISTORY_ROWS = 10_000
"""Stable's labelled rows before a rollout its labels gate starts from, at most."""


@dataclass
class LabelBook:
    """The labels taken so far, the logged predictions they join, and the quality they give."""

    predictions: str | Path
    """The prediction log: a folder, or a URL of an fsspec filesystem (`s3://...`)."""
    labels_path: Path
    registry: CollectorRegistry | None = None
    max_answers: int = DEFAULT_LIMIT
    """Logged answers held at most (see `controller.answers`)."""
    retention_days: float | None = None
    """Labels older than this are dropped from the file at start (None: kept)."""
    labelled: set[str] = field(default_factory=set)
    quality: dict[tuple[str, str], Quality] = field(default_factory=dict)
    rows: deque[LabelledRow] = field(default_factory=lambda: deque(maxlen=MAX_ROWS))
    """The newest labelled rows, in the order taken (rollouts read those taken since they last
    looked: `rows_since`)."""
    rows_taken: int = 0
    """Rows ever taken: the position after the newest row (rollouts keep a cursor in it)."""

    def __post_init__(self) -> None:
        """Register the metrics and count the labels a previous controller took.

        A stored line that cannot be counted (torn by a crash, or written by a version that
        took what this one refuses) is skipped and counted, never fatal: a controller that
        crash-looped on its own file would leave the rollout unwatched.
        """
        self.answers = LoggedAnswers(self.predictions, self.max_answers)
        self.gauge = Gauge(
            "mlcanary_quality", "Quality on labelled requests by variant, version and measure.",
            ["variant", "version", "measure"], registry=self.registry,
        )  # fmt: skip
        self.refused = Counter(
            "mlcanary_labels_refused", "Batches of labels refused (nothing kept), by reason.",
            ["reason"], registry=self.registry,
        )  # fmt: skip
        for reason in REFUSALS:
            self.refused.labels(reason)
        self.skipped = Counter(
            "mlcanary_labels_skipped", "Stored labels skipped at start: torn or invalid lines.",
            registry=self.registry,
        )  # fmt: skip
        self.held = Gauge(
            "mlcanary_logged_answers_held", "Logged answers held to join labels with.",
            registry=self.registry,
        )  # fmt: skip
        self.forgotten = Counter(
            "mlcanary_logged_answers_forgotten",
            "Logged answers forgotten, oldest first, to hold at most --max-logged-answers.",
            registry=self.registry,
        )  # fmt: skip
        self.read_log()
        for number, line in enumerate(self._stored_lines(), 1):
            try:
                item = json.loads(line)
                request_id, label = str(item["request_id"]), item["label"]
                if not _label_ok(label):
                    raise ValueError("not a label this controller takes")
                if self.answers.answer(request_id) and request_id not in self.labelled:
                    self._keep(request_id, self._labelled(request_id, label))
            except Exception as error:  # noqa: BLE001 (any bad line is skipped, none is fatal)
                self.skipped.inc()
                log.warning("%s line %d skipped: %s", self.labels_path, number, error)
        self._show()

    def _stored_lines(self) -> list[bytes]:
        """Return the labels file's lines, those past the retention dropped.

        The file is rewritten without them, atomically: its rotation.
        """
        try:
            lines = self.labels_path.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        if self.retention_days is None:
            return lines
        oldest = time.time() - self.retention_days * 86_400
        kept = [line for line in lines if _taken_at(line) >= oldest]
        if len(kept) < len(lines):
            data = b"".join(line + b"\n" for line in kept)
            write_atomically(self.labels_path, data, mode=PRIVATE_FILE)
            log.info("labels: %d older than %g days dropped", len(lines) - len(kept),
                     self.retention_days)  # fmt: skip
        return kept

    def read_log(self) -> None:
        """Take in the records appended to the prediction log since the last read."""
        before = self.answers.forgotten
        for request_id in self.answers.read_new():
            self.labelled.discard(request_id)  # a label for it is refused as unknown now
        self.forgotten.inc(self.answers.forgotten - before)
        self.held.set(len(self.answers.served))

    def rows_since(self, cursor: int) -> tuple[list[LabelledRow], int]:
        """Return the rows taken after position `cursor` (those still kept), and the new one."""
        new = self.rows_taken - cursor
        if new <= 0:
            return [], self.rows_taken
        kept = list(itertools.islice(self.rows, max(len(self.rows) - new, 0), None))
        return kept, self.rows_taken

    def recent_errors(self, variant: str, version: str, most: int = HISTORY_ROWS) -> list[float]:
        """Return the newest `most` absolute errors of a version's numeric labelled rows.

        A rollout's labels gate cuts its bad-row bound from stable's errors; those labelled
        before it started are as independent of its windows' rows as those during it, so
        the first window is judged too (issue 29).
        """
        found: list[float] = []
        for row in reversed(self.rows):
            if len(found) >= most:
                break
            if row.variant == variant and row.version == version and not row.classes:
                found.append(abs(row.error))
        found.reverse()
        return found

    def memory(self) -> dict[str, int]:
        """Say how many logged answers are held, the limit, and how many were forgotten."""
        return {
            "answers_held": len(self.answers.served), "answers_limit": self.answers.limit,
            "answers_forgotten": self.answers.forgotten,
        }  # fmt: skip

    def take(self, document: Any) -> dict[str, Any]:
        """Check a batch of labels, keep it whole (or raise LabelsRefused), return the counts.

        Every row is compared before a byte is written: whatever a label holds, a batch is
        either appended and counted whole, or refused with nothing kept.
        """
        try:
            taken = self._checked(document)
        except LabelsRefused as refusal:
            self.refused.labels(refusal.reason).inc()
            raise
        now = round(time.time(), 3)
        lines = b"".join(
            json.dumps({"request_id": i, "label": label, "time": now}, allow_nan=False).encode()
            + b"\n"
            for i, label, _ in taken
        )
        append_fsynced(self.labels_path, lines)
        for request_id, _, rows in taken:
            self._keep(request_id, rows)
        self._show()
        return {"accepted": len(taken), "quality": self.report()}

    def _checked(self, document: Any) -> list[tuple[str, Label, list[LabelledRow]]]:
        """Return each label with the rows it makes, or raise LabelsRefused (nothing kept)."""
        items = _items(document)
        ids = [item[0] for item in items]
        repeated = sorted({i for i in ids if ids.count(i) > 1} | (set(ids) & self.labelled))
        if repeated:
            message = f"already labelled: {_some(repeated)}; nothing was kept"
            raise LabelsRefused(409, "RESOURCE_ALREADY_EXISTS", message, "repeated")
        self.read_log()  # the shadow answers of the requests labelled, too
        unknown = [i for i in ids if i not in self.answers.served]
        if unknown:
            raise LabelsRefused(
                404, "RESOURCE_DOES_NOT_EXIST",
                f"not in the prediction log: {_some(unknown)} (label the X-Request-Id the router"
                " answered with, of a logged request: see the routing file's log.percent; the"
                f" newest {self.answers.limit} answers are held); nothing was kept", "unknown",
            )  # fmt: skip
        ambiguous = [i for i in ids if i in self.answers.ambiguous]
        if ambiguous:
            raise LabelsRefused(
                409, "INVALID_STATE",
                f"the prediction log holds several answers for {_some(ambiguous)}; nothing was"
                " kept", "ambiguous",
            )  # fmt: skip
        taken = []
        for index, (request_id, label) in enumerate(items):
            try:
                compared = self._labelled(request_id, label)
            except LabelsRefused as refusal:
                raise LabelsRefused(400, refusal.code, f"[{index}].label: {refusal}") from None
            except (ArithmeticError, ValueError, TypeError) as error:
                raise LabelsRefused(
                    400, "INVALID_PARAMETER_VALUE",
                    f"[{index}].label cannot be compared with its answer ({error});"
                    " nothing was kept",
                ) from None  # fmt: skip
            taken.append((request_id, label, compared))
        return taken

    def report(self) -> dict[str, dict[str, dict[str, float | int | None]]]:
        """Return the quality by variant, then version."""
        shown: dict[str, dict[str, dict[str, float | int | None]]] = {}
        for (variant, version), quality in sorted(self.quality.items()):
            shown.setdefault(variant, {})[version] = quality.to_json()
        return shown

    def _labelled(self, request_id: str, label: Any) -> list[LabelledRow]:
        """Compare a logged request's answer, and its shadow answer's, with its label."""
        answer = self.answers.answer(request_id)
        assert answer is not None  # noqa: S101 (checked by the callers)
        rows = rows_of(answer.predictions)
        if isinstance(label, list) and len(label) != len(rows):
            raise LabelsRefused(
                400, "INVALID_PARAMETER_VALUE",
                f"{len(label)} labels for a request of {len(rows)} rows; nothing was kept",
            )  # fmt: skip
        served = compared(answer, label, [])
        shadow = self.answers.shadow(request_id)
        return served + (compared(shadow, label, served) if shadow is not None else [])

    def _keep(self, request_id: str, rows: list[LabelledRow]) -> None:
        """Count a label's rows into each variant's quality and the rows rollouts read."""
        self.labelled.add(request_id)
        for row in rows:
            self.quality.setdefault((row.variant, row.version), Quality()).add(row)
            self.rows.append(row)
        self.rows_taken += len(rows)

    def _show(self) -> None:
        for (variant, version), quality in self.quality.items():
            for measure, value in quality.to_json().items():
                if value is not None:
                    self.gauge.labels(variant, version, measure).set(value)


def _taken_at(line: bytes) -> float:
    """Return when a stored label was taken (labels stored before times were kept: now)."""
    try:
        return float(json.loads(line).get("time", time.time()))
    except (ValueError, AttributeError, TypeError):
        return time.time()  # a torn line: skipped when counted, not here


def _items(document: Any) -> list[tuple[str, Any]]:
    """Return (request id, label) pairs of a body: one object or a list of them (else 400)."""
    listed = document if isinstance(document, list) else [document]
    if not listed or len(listed) > MAX_LABELS:
        raise LabelsRefused(400, "INVALID_PARAMETER_VALUE",
                            f"send 1 to {MAX_LABELS} labels, got {len(listed)}")  # fmt: skip
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
            problems.append(f"{where}.label: must be a finite number (at most 1e150 either way),"
                            f" a string of at most {MAX_LABEL_TEXT} characters, a boolean or a"
                            " list of them (one per row)")  # fmt: skip
        else:
            items.append((request_id, label))
    if problems:
        raise LabelsRefused(400, "INVALID_PARAMETER_VALUE",
                            f"{_some(problems)}; nothing was kept")  # fmt: skip
    return items


MAX_LABEL_MAGNITUDE = 1e150
"""The largest number taken as a label: far past any real target, and small enough that the
squares RMSE adds up stay numbers (1e308 squared is infinite; 1e150 squared, 1e300, leaves room
for a million labels below the largest float)."""


def _label_ok(label: Any) -> bool:
    """Whether a label can be counted: a finite number, a short string, a boolean, or a list."""
    if isinstance(label, list):
        return bool(label) and all(_label_ok(item) and not isinstance(item, list) for item in label)
    if isinstance(label, bool):
        return True
    if isinstance(label, str):
        return len(label) <= MAX_LABEL_TEXT
    if isinstance(label, int | float):
        try:
            return math.isfinite(float(label)) and abs(float(label)) <= MAX_LABEL_MAGNITUDE
        except OverflowError:  # an integer of hundreds of digits
            return False
    return False


def _some(names: list[str]) -> str:
    shown = ", ".join(str(name) for name in names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")
