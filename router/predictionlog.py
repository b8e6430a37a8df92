"""The router's side of the prediction log: record a share of answers, write them off the path.

A 200 to a scoring request is recorded, when the routing file's `log.percent` draws it, as the
raw request and answer bodies in a bounded queue (`record` costs a draw and an append; nothing
is parsed on the request path). A task hands the queue every `FLUSH_S` to a thread that parses
the bodies and appends the records to this process's file (`common.predictionlog`), flushed and
fsynced. Past `MAX_PENDING` records or `MAX_PENDING_BYTES` waiting, new ones are dropped and
counted (`mlcanary_prediction_log_records_total{result="dropped"}`), never waited for.

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
from typing import Any

from prometheus_client import Counter

from common.predictionlog import Prediction, file_for

log = logging.getLogger("router")
FLUSH_S = 0.5
MAX_PENDING = 100_000
MAX_PENDING_BYTES = 64 * 1024 * 1024
Pending = tuple[float, str, str, str, bytes, bytes]


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
        records.labels("unparsable")

    def record(
        self, request_id: str, variant: str, version: str, request: bytes, answer: bytes
    ) -> None:
        """Queue one answer, if the share draws it and the queue has room (else count a drop)."""
        percent = self.percent()
        if self.folder is None or percent <= 0 or self.rng.random() * 100 >= percent:
            return
        size = len(request) + len(answer)
        if len(self.pending) >= MAX_PENDING or self.pending_bytes + size > MAX_PENDING_BYTES:
            self._dropped.inc()
            return
        self.pending.append((time.time(), request_id, variant, version, request, answer))
        self.pending_bytes += size

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
            log.warning("prediction log: %d records lost: %s", len(batch), error)

    def _write(self, batch: list[Pending]) -> None:
        assert self.folder is not None  # noqa: S101 (nothing is queued without a folder)
        by_file: dict[Path, list[bytes]] = {}
        for at, request_id, variant, version, request, answer in batch:
            record = Prediction(request_id, at, variant, version, _inputs(request),
                                _predictions(answer))  # fmt: skip
            by_file.setdefault(file_for(self.folder, self.instance, at), []).append(record.line())
        for path, lines in by_file.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("ab") as handle:
                handle.write(b"".join(lines))
                handle.flush()
                os.fsync(handle.fileno())
        self._written.inc(len(batch))


def _inputs(request: bytes) -> Any:
    """Return the request body as sent: its JSON, or its text (CSV)."""
    try:
        return json.loads(request)
    except ValueError:
        return request.decode("utf-8", errors="replace")


def _predictions(answer: bytes) -> Any:
    """Return the model server's `predictions` (its whole answer if it has another shape)."""
    try:
        document = json.loads(answer)
    except ValueError:
        return answer.decode("utf-8", errors="replace")
    return document.get("predictions", document) if isinstance(document, dict) else document
