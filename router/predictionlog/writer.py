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

Retention: with `retention_days`, day folders past it are removed (checked hourly): the log
holds request bodies, personal data, for no longer than the operator chose.

What is guaranteed: a record of an answer sent before the router was told to stop (SIGTERM,
Ctrl-C) is on disk when it exits (the queue is written after the front has drained); a
SIGKILL or a power cut loses at most the last `FLUSH_S` of records; a torn last line is
skipped by readers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common.files import append_fsynced
from common.predictionlog import expire_days, file_for
from router.telemetry.plainmetrics import PlainCounter

log = logging.getLogger("router")
FLUSH_S = 0.5
EXPIRE_EVERY_S = 3600.0
MAX_PENDING = 100_000
MAX_PENDING_BYTES = 64 * 1024 * 1024
STAMP_S = 0.001
"""Records' times are written to the millisecond, formatted at most once per millisecond."""
QUOTE, BACKSLASH, NEWLINE, RETURN = ord('"'), ord("\\"), ord("\n"), ord("\r")


@dataclass
class Pending:
    """Records queued for the next write: their lines' pieces, in order, and where hours turn."""

    pieces: list[bytes] = field(default_factory=list)
    """Every queued line as its pieces (joined once, in C, when written)."""
    hours: list[tuple[int, float]] = field(default_factory=list)
    """(index in `pieces`, a record's time): where the records of each hour start."""
    records: int = 0
    size: int = 0


class PredictionLog:
    """Records a share of answered predictions to files under `folder`."""

    def __init__(
        self,
        folder: Path | None,
        instance: str,
        percent: Callable[[], float],
        records: PlainCounter,
        rng: random.Random | None = None,
        retention_days: float | None = None,
    ) -> None:
        self.folder, self.instance, self.percent, self.records = folder, instance, percent, records
        self.retention_days = retention_days
        self._expired_at = 0.0
        self.rng = rng or random.Random()  # noqa: S311 (sampling, not cryptography)
        self.pending = Pending()
        self._hour_ends = 0.0
        """When the hour of the last queued record ends (a record past it starts a file)."""
        self._stamped_at, self._stamp = 0.0, b""
        """The last time formatted (records within `STAMP_S` of it share its text)."""
        self._labels: dict[tuple[str, str], bytes] = {}
        """The same few (variant, version) pairs' middle of a line, serialized once."""
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
        client_id: bytes = b"",
    ) -> bool:
        """Queue one answer if the share draws it and the queue has room; return whether it was.

        `draw` false: record without a draw (a shadow answer goes with the answer it copies).
        `client_id`: the client's own id for the request, recorded beside the router's.
        A full queue counts a drop. The line is queued as its pieces, the usual cases (an id
        with nothing to escape, JSON bodies on one line) checked inline: the writer thread then
        only joins them, in C, and holds the interpreter for a moment per batch.
        """
        if self.folder is None:
            return False
        if draw:
            percent = self.percent()
            if percent <= 0 or (percent < 100 and self.rng.random() * 100 >= percent):
                return False
        pending = self.pending
        size = len(request) + len(answer)
        if pending.records >= MAX_PENDING or pending.size + size > MAX_PENDING_BYTES:
            self._dropped.inc()
            return False
        at = time.time()
        if at >= self._hour_ends:
            pending.hours.append((len(pending.pieces), at))
            self._hour_ends = at - at % 3600 + 3600
        if at - self._stamped_at >= STAMP_S:
            self._stamped_at, self._stamp = at, b"%.3f" % at
        label = self._labels.get((variant, version))
        if label is None:
            label = b',"variant":%s,"version":%s,"inputs":' % (
                json.dumps(variant).encode(), json.dumps(version).encode()
            )  # fmt: skip
            self._labels[(variant, version)] = label
        # Bytes as ints: `10 in body` is a memchr, six times faster than `b"\n" in body`.
        if QUOTE in request_id or BACKSLASH in request_id:
            request_id = json.dumps(request_id.decode("latin-1")).encode()[1:-1]
        if request[:1] != b"{" or NEWLINE in request or RETURN in request:
            request = _embedded(request)
        if answer[:1] != b"{" or NEWLINE in answer or RETURN in answer:
            answer = _embedded(answer)
        if client_id:  # a usable id is visible ASCII: only a quote or backslash to escape
            client_id = b',"client_id":' + json.dumps(client_id.decode("latin-1")).encode()
        pending.pieces += (b'{"request_id":"', request_id, b'"', client_id, b',"time":',
                           self._stamp, label, request, b',"answer":', answer, b"}\n")  # fmt: skip
        pending.records += 1
        pending.size += size
        return True

    async def run(self) -> None:
        """Write what is queued every `FLUSH_S`, until cancelled (then call `flush`)."""
        while True:
            await asyncio.sleep(FLUSH_S)
            await self.flush()
            if self.retention_days and time.monotonic() - self._expired_at >= EXPIRE_EVERY_S:
                self._expired_at = time.monotonic()
                await self.expire()

    async def expire(self) -> None:
        """Remove the days past the retention (in a thread: it touches the disk)."""
        if self.folder is None or not self.retention_days:
            return
        try:
            removed = await asyncio.to_thread(expire_days, self.folder, self.retention_days)
        except OSError as error:
            log.warning("prediction log: old days not removed: %s", error)
            return
        for day in removed:
            log.info("prediction log: %s removed (older than %g days)", day, self.retention_days)

    async def flush(self) -> None:
        """Write everything queued now (in a thread: the join and fsync stay off the loop)."""
        if not self.pending.records:
            return
        batch, self.pending, self._hour_ends = self.pending, Pending(), 0.0
        try:
            await asyncio.to_thread(self._write, batch)
        except OSError as error:
            self._dropped.inc(batch.records)
            if str(error) != self._failing:  # once, not every half second
                log.warning("prediction log: records are being lost: %s", error)
            self._failing = str(error)
            return
        if self._failing:
            log.warning("prediction log: written again")
            self._failing = ""

    def _write(self, batch: Pending) -> None:
        assert self.folder is not None  # noqa: S101 (nothing is queued without a folder)
        ends = [index for index, _ in batch.hours[1:]] + [len(batch.pieces)]
        for (start, at), end in zip(batch.hours, ends, strict=True):
            append_fsynced(
                file_for(self.folder, self.instance, at), b"".join(batch.pieces[start:end])
            )
        self._written.inc(batch.records)


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
