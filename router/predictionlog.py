"""The router's side of the prediction log: record a share of answers, write them off the path.

A 200 to a scoring request is recorded, when the routing file's `log.percent` draws it, as the
raw request and answer bodies in a bounded queue (`record` costs a draw and an append). A task
hands the queue every `FLUSH_S` to a thread that appends the records to this process's file
(`common.predictionlog`), flushed and fsynced. Nothing is parsed: a body the model server
answered 200 is JSON (or CSV text), so it is embedded as it came, its line breaks (whitespace
between JSON tokens, never inside a JSON string) made spaces; the thread holds the interpreter
only briefly, and the event loop keeps serving. Past `MAX_PENDING` records or
`MAX_PENDING_BYTES` waiting, new ones are dropped and counted
(`mlcanary_prediction_log_records_total{result="dropped"}`), never waited for.

What is guaranteed: a record of an answer sent before the router was told to stop (SIGTERM,
Ctrl-C) is on disk when it exits (the queue is written after the front has drained); a
SIGKILL or a power cut loses at most the last `FLUSH_S` of records; a torn last line is
skipped by readers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import Counter

from common.predictionlog import file_for

log = logging.getLogger("router")
FLUSH_S = 0.5
MAX_PENDING = 100_000
MAX_PENDING_BYTES = 64 * 1024 * 1024
Pending = tuple[float, bytes, str, str, bytes, bytes]


class PredictionLog:
    """Records a share of answered predictions to files under `folder`."""

    def __init__(
        self,
        folder: Path | None,
        instance: str,
        percent: Callable[[], float],
        records: Counter,
        rng: random.Random | None = None,
    ) -> None:
        self.folder, self.instance, self.percent, self.records = folder, instance, percent, records
        self.rng = rng or random.Random()  # noqa: S311 (sampling, not cryptography)
        self.pending: list[Pending] = []
        self.pending_bytes = 0
        self._written = records.labels("written")
        self._dropped = records.labels("dropped")
        self._failing = ""
        """The last write's error, said once until writes work again."""

    def record(
        self,
        request_id: bytes,
        variant: str,
        version: str,
        request: bytes,
        answer: bytes,
        draw: bool = True,
    ) -> bool:
        """Queue one answer if the share draws it and the queue has room; return whether it was.

        `draw` false: record without a draw (a shadow answer goes with the answer it copies).
        A full queue counts a drop.
        """
        if self.folder is None:
            return False
        if draw:
            percent = self.percent()
            if percent <= 0 or (percent < 100 and self.rng.random() * 100 >= percent):
                return False
        size = len(request) + len(answer)
        if len(self.pending) >= MAX_PENDING or self.pending_bytes + size > MAX_PENDING_BYTES:
            self._dropped.inc()
            return False
        self.pending.append((time.time(), request_id, variant, version, request, answer))
        self.pending_bytes += size
        return True

    async def run(self) -> None:
        """Write what is queued every `FLUSH_S`, until cancelled (then call `flush`)."""
        while True:
            await asyncio.sleep(FLUSH_S)
            await self.flush()

    async def flush(self) -> None:
        """Write everything queued now (in a thread: parsing and fsync stay off the loop)."""
        if not self.pending:
            return
        batch, self.pending, self.pending_bytes = self.pending, [], 0
        try:
            await asyncio.to_thread(self._write, batch)
        except OSError as error:
            self._dropped.inc(len(batch))
            if str(error) != self._failing:  # once, not every half second
                log.warning("prediction log: records are being lost: %s", error)
            self._failing = str(error)
            return
        if self._failing:
            log.warning("prediction log: written again")
            self._failing = ""

    def _write(self, batch: list[Pending]) -> None:
        assert self.folder is not None  # noqa: S101 (nothing is queued without a folder)
        by_file: dict[Path, list[bytes]] = {}
        hour = -1.0
        lines: list[bytes] = []
        labels: dict[tuple[str, str], bytes] = {}
        for at, request_id, variant, version, request, answer in batch:
            if not hour <= at < hour + 3600:
                hour = at - at % 3600
                lines = by_file.setdefault(file_for(self.folder, self.instance, at), [])
            label = labels.get((variant, version))
            if label is None:  # the same few pairs: serialized once a batch
                label = b',"variant":%s,"version":%s,"inputs":' % (
                    json.dumps(variant).encode(),
                    json.dumps(version).encode(),
                )
                labels[(variant, version)] = label
            # Pieces joined once, as a list: half the cost of formatting each line; the usual
            # cases (an id with nothing to escape, JSON bodies on one line) checked inline.
            if b'"' in request_id or b"\\" in request_id:
                quoted = json.dumps(request_id.decode("latin-1")).encode()
            else:
                quoted = b'"%s"' % request_id
            if request[:1] != b"{" or b"\n" in request or b"\r" in request:
                request = _embedded(request)
            if answer[:1] != b"{" or b"\n" in answer or b"\r" in answer:
                answer = _embedded(answer)
            lines += (b'{"request_id":', quoted, b',"time":', repr(at).encode(), label, request,
                      b',"answer":', answer, b"}\n")  # fmt: skip
        for path, pieces in by_file.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("ab") as handle:
                handle.write(b"".join(pieces))
                handle.flush()
                os.fsync(handle.fileno())
        self._written.inc(len(batch))


def _embedded(body: bytes) -> bytes:
    """Return a body as a JSON value: as it came if it is JSON, else as a JSON string (CSV)."""
    start = body[:1]
    if start not in (b"{", b"["):
        start = body.lstrip()[:1]
    if start in (b"{", b"["):
        if b"\n" in body or b"\r" in body:
            return body.replace(b"\n", b" ").replace(b"\r", b" ")
        return body
    return json.dumps(body.decode("utf-8", errors="replace")).encode()
