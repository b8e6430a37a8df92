"""The prediction log's format and layout, shared by its writer (the router) and its readers.

Each record is one JSON line: `request_id`, `time` (Unix seconds), `variant`, `version`,
`inputs` (the request body as sent: its JSON, or its text for CSV) and `answer` (the model
server's answer, whose `predictions` readers take). Files are
`<folder>/<YYYY-MM-DD>/<HH>-<router instance>.jsonl` (UTC): each router process appends to its
own file, so processes never interleave lines, and a new file starts every hour. A line torn
by a crash is skipped by readers, never fatal.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class Prediction:
    """One logged answer."""

    request_id: str
    time: float
    variant: str
    version: str
    inputs: Any
    predictions: Any


def file_for(folder: Path, instance: str, at: float) -> Path:
    """Return the file a router process `instance` appends a record made `at` to."""
    stamp = time.gmtime(at)
    return folder / time.strftime("%Y-%m-%d", stamp) / f"{stamp.tm_hour:02d}-{instance}.jsonl"


def read_predictions(folder: Path, since: float = 0.0) -> Iterator[Prediction]:
    """Yield every record made at or after `since`, file by file (hours in order)."""
    for day in sorted(path for path in folder.glob("*") if path.is_dir()):
        if day.name < time.strftime("%Y-%m-%d", time.gmtime(since)):
            continue
        for path in sorted(day.glob("*.jsonl")):
            with path.open("rb") as lines:
                for line in lines:
                    record = parse_line(line)
                    if record is not None and record.time >= since:
                        yield record


def load_predictions(folder: Path, since: float = 0.0) -> pd.DataFrame:
    """Return the records made at or after `since` as a pandas DataFrame, one row each.

    Inputs and predictions are JSON text; `time` is a UTC timestamp.
    """
    import pandas as pd

    rows = [
        {"request_id": r.request_id, "time": r.time, "variant": r.variant, "version": r.version,
         "inputs": json.dumps(r.inputs), "predictions": json.dumps(r.predictions)}
        for r in read_predictions(folder, since)
    ]  # fmt: skip
    columns = ["request_id", "time", "variant", "version", "inputs", "predictions"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["time"] = pd.to_datetime(frame["time"], unit="s", utc=True)
    return frame


def parse_line(line: bytes) -> Prediction | None:
    """Return the record on `line`, or None for a torn or foreign one."""
    try:
        data = json.loads(line)
        answer = data["answer"]
        predictions = answer.get("predictions", answer) if isinstance(answer, dict) else answer
        return Prediction(
            str(data["request_id"]), float(data["time"]), str(data["variant"]),
            str(data["version"]), data["inputs"], predictions,
        )  # fmt: skip
    except (ValueError, KeyError, TypeError):
        return None
