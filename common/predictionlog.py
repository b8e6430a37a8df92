"""The prediction log's format and layout, shared by its writer (the router) and its readers.

Each record is one JSON line: `request_id` (issued by the router), `client_id` (the client's own
`X-Request-Id`, when it sent one), `time` (Unix seconds, to the millisecond),
`variant`, `version`, `inputs` (the request body as sent: its JSON, or its text for CSV) and
`answer` (the model server's answer, whose `predictions` readers take). A shadowed request
has a second record with the same id: the canary's answer to the copy, as variant `shadow`
(`SHADOW`). Files are `<folder>/<YYYY-MM-DD>/<HH>-<router instance>.jsonl` (UTC): each router
process appends to its own file, so processes never interleave lines, and a new file starts
every hour. A line torn
by a crash is skipped by readers, never fatal.

The log may also live on any fsspec filesystem (`s3://bucket/predictions`, ...), where objects
cannot be appended to: the router writes locally as above and uploads what it wrote in parts,
`<HH>-<router instance>-<byte offset>.jsonl` in the same day folders (`part_name`). A part is
never changed once written, and its name says where its bytes were in the local file, so an
upload repeated after a crash writes the same part again, never a second copy. Readers take a
folder or a URL alike (`log_filesystem`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.predictions import predictions_in

if TYPE_CHECKING:
    import pandas as pd
    from fsspec import AbstractFileSystem


SHADOW = "shadow"
"""The variant of a record that is the canary's answer to a copy of a stable-routed request."""


@dataclass(frozen=True)
class Prediction:
    """One logged answer."""

    request_id: str
    time: float
    variant: str
    version: str
    inputs: Any
    predictions: Any
    client_id: str | None = None
    """The client's own `X-Request-Id`, if it sent one (never what labels join on)."""


def file_for(folder: Path, instance: str, at: float) -> Path:
    """Return the file a router process `instance` appends a record made `at` to."""
    stamp = time.gmtime(at)
    return folder / time.strftime("%Y-%m-%d", stamp) / f"{stamp.tm_hour:02d}-{instance}.jsonl"


def part_name(local_file: Path, offset: int) -> str:
    """Return the name, under the log's root, of the part of `local_file` from byte `offset`."""
    return f"{local_file.parent.name}/{local_file.stem}-{offset:012d}.jsonl"


def is_local(location: str | Path) -> bool:
    """Whether the log is a local folder (appended to) rather than a filesystem URL."""
    return isinstance(location, Path) or "://" not in location or location.startswith("file://")


def check_location(location: str | Path) -> str | Path:
    """Return `location` if its filesystem can be used here, else raise ValueError saying why.

    Nothing is connected to: only the filesystem's implementation is looked up, so a typo in
    the scheme or a missing package is said at start, not at the first upload.
    """
    if is_local(location):
        return location
    from fsspec.registry import get_filesystem_class

    protocol = str(location).split("://", 1)[0]
    try:
        get_filesystem_class(protocol)
    except ImportError as error:
        raise ValueError(
            f"{location}: {error} (for S3: pip install 'mlcanary[s3]')"
        ) from error  # fmt: skip
    except ValueError as error:
        raise ValueError(f"{location}: no fsspec filesystem for {protocol}://") from error
    return location


def log_filesystem(location: str | Path) -> tuple[AbstractFileSystem, str]:
    """Return the filesystem the log is on and its root there (a folder or a URL)."""
    from fsspec.core import url_to_fs

    return url_to_fs(str(location))  # type: ignore[no-any-return]


def log_files(filesystem: AbstractFileSystem, root: str) -> list[str]:
    """Return the log's files (local files and uploaded parts), hours in order.

    The listing is read afresh: object stores' clients cache every folder's (the day
    folders' too), and new parts come.
    """
    filesystem.invalidate_cache()
    return sorted(filesystem.glob(f"{root.rstrip('/')}/*/*.jsonl"))


def read_predictions(location: str | Path, since: float = 0.0) -> Iterator[Prediction]:
    """Yield every record made at or after `since`, file by file (hours in order)."""
    filesystem, root = log_filesystem(location)
    first_day = time.strftime("%Y-%m-%d", time.gmtime(since))
    for path in log_files(filesystem, root):
        if path.rsplit("/", 2)[-2] < first_day:
            continue
        with filesystem.open(path, "rb") as lines:
            for line in lines:
                record = parse_line(line)
                if record is not None and record.time >= since:
                    yield record


def load_predictions(location: str | Path, since: float = 0.0) -> pd.DataFrame:
    """Return the records made at or after `since` as a pandas DataFrame, one row each.

    Inputs and predictions are JSON text; `time` is a UTC timestamp.
    """
    import pandas as pd

    rows = [
        {"request_id": r.request_id, "client_id": r.client_id, "time": r.time,
         "variant": r.variant, "version": r.version,
         "inputs": json.dumps(r.inputs), "predictions": json.dumps(r.predictions)}
        for r in read_predictions(location, since)
    ]  # fmt: skip
    columns = ["request_id", "client_id", "time", "variant", "version", "inputs", "predictions"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["time"] = pd.to_datetime(frame["time"], unit="s", utc=True)
    return frame


def parse_line(line: bytes) -> Prediction | None:
    """Return the record on `line`, or None for a torn or foreign one."""
    try:
        data = json.loads(line)
        answer = data["answer"]
        predictions = answer
        if isinstance(answer, dict) and ("predictions" in answer or "outputs" in answer):
            predictions = predictions_in(answer)  # MLflow's answer, or a V2 one
        return Prediction(
            str(data["request_id"]), float(data["time"]), str(data["variant"]),
            str(data["version"]), data["inputs"], predictions,
            str(data["client_id"]) if "client_id" in data else None,
        )  # fmt: skip
    except (ValueError, KeyError, TypeError):
        return None


def expire_days(folder: Path, keep_days: float, now: float | None = None) -> list[Path]:
    """Remove the day folders of a local log older than `keep_days` (its retention); return them.

    A day goes once all of it is past the retention. Several processes may do this at once:
    one that finds a folder gone leaves it.
    """
    import calendar
    import shutil

    oldest = (time.time() if now is None else now) - keep_days * 86_400
    removed = []
    for day in sorted(folder.glob("????-??-??")):
        try:
            ends = calendar.timegm(time.strptime(day.name, "%Y-%m-%d")) + 86_400  # UTC days
        except ValueError:
            continue  # not one of ours
        if ends < oldest:
            shutil.rmtree(day, ignore_errors=True)
            removed.append(day)
    return removed
