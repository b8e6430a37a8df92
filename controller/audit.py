"""The audit log: one JSON line per change (time, action, reason, before, after), fsynced."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.files import append_fsynced


def append_audit(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Append `record` with its UTC time as one line and fsync; return what was written."""
    line = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), **record}
    append_fsynced(path, (json.dumps(line, sort_keys=True) + "\n").encode())
    return line


def read_audit(path: Path, last: int = 20) -> list[dict[str, Any]]:
    """Return the newest `last` records, oldest first (a torn last line is skipped)."""
    if not path.exists():
        return []
    records = []
    for text in path.read_text(encoding="utf-8").splitlines()[-last:]:
        try:
            records.append(json.loads(text))
        except ValueError:
            continue
    return records
