"""The logged answers labels are joined with, held in little memory, oldest forgotten first.

A controller joins labels with the prediction log's answers by request id. It keeps of each
answer only what a label is judged against: its variant and version (an index into the few
pairs seen) and its predictions as compact JSON, decoded when a label comes: not the request
body (2 KiB of inputs, say), which the log keeps. The log is read incrementally and in chunks
(never a file whole), and at most `limit` answers are held: past it the oldest tenth are
forgotten at once (counted, and shown in `/api/status`), so a controller's memory is bounded
whatever the traffic. A label for a forgotten answer is refused like one for an id never
logged.

A request the router shadowed has two answers: stable's, sent to the client, and the canary's
to the copy (variant `shadow`), held apart. An id the log holds two client answers for (a log
written before the router issued every id) is ambiguous: never labelled.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from common.predictionlog import SHADOW, is_local, log_files, log_filesystem, parse_line

CHUNK_BYTES = 1024 * 1024
"""The log is read this much at a time."""
DEFAULT_LIMIT = 500_000
"""Answers held at most by default: about 100 MB (see docs/benchmarks.md)."""


class Answer(NamedTuple):
    """What a label is judged against: who answered, and the predictions."""

    variant: str
    version: str
    predictions: Any


@dataclass
class LoggedAnswers:
    """The prediction log's answers by request id, read as the log grows (see the module)."""

    location: str | Path
    """The prediction log: a folder, or a URL of an fsspec filesystem (`s3://...`)."""
    limit: int = DEFAULT_LIMIT
    served: dict[str, bytes] = field(default_factory=dict)
    """Client answers by id: a 2-byte index into `pairs`, then the predictions as JSON."""
    shadows: dict[str, bytes] = field(default_factory=dict)
    """The canary's shadow answers, by the id of the request they copy."""
    pairs: list[tuple[str, str]] = field(default_factory=list)
    """(variant, version) of the answers held, by index."""
    ambiguous: set[str] = field(default_factory=set)
    read_to: dict[str, int] = field(default_factory=dict)
    """By log file: the bytes read so far (whole lines only)."""
    forgotten: int = 0
    """Answers dropped to stay within `limit`, oldest first."""
    _pair_index: dict[tuple[str, str], bytes] = field(default_factory=dict)

    def read_new(self) -> list[str]:
        """Take in the records appended since the last read; return the ids forgotten."""
        filesystem, root = log_filesystem(self.location)
        uploaded = not is_local(self.location)  # parts, written once: never read twice
        present = set()
        for path in log_files(filesystem, root):
            present.add(path)
            start = self.read_to.get(path, 0)
            if start and (uploaded or start >= filesystem.size(path)):
                continue
            self.read_to[path] = self._read_file(filesystem, path, start)
        for gone in set(self.read_to) - present:  # removed by the log's retention
            del self.read_to[gone]
        return self._trim()

    def answer(self, request_id: str) -> Answer | None:
        """Return the answer sent to the client for `request_id`, if held."""
        return self._decoded(self.served.get(request_id))

    def shadow(self, request_id: str) -> Answer | None:
        """Return the canary's answer to `request_id`'s shadow copy, if held."""
        return self._decoded(self.shadows.get(request_id))

    def _read_file(self, filesystem: Any, path: str, start: int) -> int:
        """Take in a file's whole lines from byte `start`, a chunk at a time.

        Return where the reading stopped (before a torn last line).
        """
        consumed, carry = start, b""
        with filesystem.open(path, "rb") as handle:
            handle.seek(start)
            while chunk := handle.read(CHUNK_BYTES):
                data = carry + chunk
                end = data.rfind(b"\n") + 1
                for line in data[:end].splitlines():
                    self._take(line)
                consumed += end
                carry = data[end:]
        return consumed

    def _take(self, line: bytes) -> None:
        record = parse_line(line)
        if record is None:
            return
        held = self._pair(record.variant, record.version) + json.dumps(
            record.predictions, separators=(",", ":")
        ).encode()  # fmt: skip
        if record.variant == SHADOW:
            self.shadows[record.request_id] = held
        elif record.request_id in self.served:
            self.ambiguous.add(record.request_id)
        else:
            self.served[record.request_id] = held

    def _pair(self, variant: str, version: str) -> bytes:
        index = self._pair_index.get((variant, version))
        if index is None:
            index = len(self.pairs).to_bytes(2, "big")  # 65,536 pairs: versions come slowly
            self.pairs.append((variant, version))
            self._pair_index[(variant, version)] = index
        return index

    def _decoded(self, held: bytes | None) -> Answer | None:
        if held is None:
            return None
        variant, version = self.pairs[int.from_bytes(held[:2], "big")]
        return Answer(variant, version, json.loads(held[2:]))

    def _trim(self) -> list[str]:
        """Forget the oldest answers past `limit`, down to nine tenths of it.

        So the dictionaries are rebuilt once per tenth of the limit, not on every read.
        """
        if len(self.served) <= self.limit:
            return []
        drop = len(self.served) - self.limit * 9 // 10
        dropped = list(itertools.islice(self.served, drop))
        self.served = dict(itertools.islice(self.served.items(), drop, None))
        for request_id in dropped:
            self.shadows.pop(request_id, None)
        self.forgotten += drop
        if len(self.shadows) > self.limit:  # shadows of answers never held (a sampled log)
            extra = len(self.shadows) - self.limit * 9 // 10
            self.shadows = dict(itertools.islice(self.shadows.items(), extra, None))
        return dropped
