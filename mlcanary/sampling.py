"""Sample traffic for `mlcanary predict`: dataset rows sent through the router one by one."""

from __future__ import annotations

import csv
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from itertools import cycle, islice
from pathlib import Path
from urllib.parse import quote

from common.predictions import predictions_in

FEATURES = ("hours_studied", "sleep_hours", "attendance_percent", "previous_scores")
LABEL = "exam_score"
LOGGED_WITHIN_S = 10.0
"""How long labels are offered again while their predictions are not in the log yet."""


@dataclass(frozen=True)
class SampleAnswer:
    """One row's answer and who served it."""

    student: str
    prediction: str
    variant: str
    version: str
    status: int
    request_id: str = ""
    label: float | None = None
    """The row's true score, from the dataset (sent later as feedback with `--labels`)."""


def send_samples(
    router: str, dataset: Path, count: int, user: str | None, v2_model: str | None = None
) -> list[SampleAnswer]:
    """POST `count` dataset rows (cycling) to the router; return the answers.

    To `/invocations`, or with `v2_model` to `/v2/models/{v2_model}/infer` (the Open
    Inference Protocol: one FP64 input per column).
    """
    with dataset.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [_send(router, row, user, v2_model) for row in islice(cycle(rows), count)]


def request_of(row: dict[str, str], v2_model: str | None) -> tuple[str, bytes]:
    """Return the path and body asking for one row's prediction in the protocol chosen."""
    if v2_model is None:
        record = {name: float(row[name]) for name in FEATURES}
        return "/invocations", json.dumps({"dataframe_records": [record]}).encode()
    inputs = [{"name": name, "shape": [1, 1], "datatype": "FP64", "data": [float(row[name])]}
              for name in FEATURES]  # fmt: skip
    path = f"/v2/models/{quote(v2_model, safe='')}/infer"
    return path, json.dumps({"inputs": inputs}).encode()


def _send(router: str, row: dict[str, str], user: str | None, v2_model: str | None) -> SampleAnswer:
    path, body = request_of(row, v2_model)
    headers = {"Content-Type": "application/json"}
    if user is not None:
        headers["X-User-Id"] = user
    request = urllib.request.Request(  # noqa: S310 (the router URL we were given)
        f"{router}{path}", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
            status, text, tags = answer.status, answer.read(), answer.headers
    except urllib.error.HTTPError as error:
        status, text, tags = error.code, error.read(), error.headers
    try:
        predictions = predictions_in(json.loads(text))
        prediction = f"{predictions[0]:.2f}" if predictions else "-"
    except (ValueError, AttributeError, TypeError, IndexError):
        prediction = text[:60].decode(errors="replace")
    return SampleAnswer(
        student=row.get("student_id", "?"),
        prediction=prediction,
        variant=tags.get("X-Model-Variant", "-"),
        version=tags.get("X-Model-Version", "-"),
        status=status,
        request_id=tags.get("X-Request-Id", ""),
        label=float(row[LABEL]) if row.get(LABEL) else None,
    )


def send_labels(router: str, token: str, answers: list[SampleAnswer]) -> int:
    """POST the true scores of the answered rows to the router's /feedback; return how many.

    Only answered (200) requests with a label are sent: the others were never logged.
    """
    labels = [
        {"request_id": answer.request_id, "label": answer.label}
        for answer in answers
        if answer.status == 200 and answer.request_id and answer.label is not None
    ]
    if not labels:
        return 0
    request = urllib.request.Request(  # noqa: S310 (the router URL we were given)
        f"{router}/feedback", data=json.dumps(labels).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )  # fmt: skip
    deadline = time.monotonic() + LOGGED_WITHIN_S
    while True:
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310
                return int(json.loads(answer.read())["accepted"])
        except urllib.error.HTTPError as error:
            # 404: not in the prediction log yet (written every half second); try again.
            if error.code != 404 or time.monotonic() > deadline:
                raise
            error.close()
        time.sleep(0.25)
