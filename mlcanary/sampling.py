"""Sample traffic for `mlcanary predict`: dataset rows sent through the router one by one."""

from __future__ import annotations

import csv
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from itertools import cycle, islice
from pathlib import Path

FEATURES = ("hours_studied", "sleep_hours", "attendance_percent", "previous_scores")


@dataclass(frozen=True)
class SampleAnswer:
    """One row's answer and who served it."""

    student: str
    prediction: str
    variant: str
    version: str
    status: int


def send_samples(router: str, dataset: Path, count: int, user: str | None) -> list[SampleAnswer]:
    """POST `count` dataset rows (cycling) to the router's /invocations; return the answers."""
    with dataset.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [_send(router, row, user) for row in islice(cycle(rows), count)]


def _send(router: str, row: dict[str, str], user: str | None) -> SampleAnswer:
    record = {name: float(row[name]) for name in FEATURES}
    body = json.dumps({"dataframe_records": [record]}).encode()
    headers = {"Content-Type": "application/json"}
    if user is not None:
        headers["X-User-Id"] = user
    request = urllib.request.Request(  # noqa: S310 (the router URL we were given)
        f"{router}/invocations", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
            status, text, tags = answer.status, answer.read(), answer.headers
    except urllib.error.HTTPError as error:
        status, text, tags = error.code, error.read(), error.headers
    try:
        predictions = json.loads(text).get("predictions")
        prediction = f"{predictions[0]:.2f}" if predictions else "-"
    except (ValueError, AttributeError, TypeError, IndexError):
        prediction = text[:60].decode(errors="replace")
    return SampleAnswer(
        student=row.get("student_id", "?"),
        prediction=prediction,
        variant=tags.get("X-Model-Variant", "-"),
        version=tags.get("X-Model-Version", "-"),
        status=status,
    )
