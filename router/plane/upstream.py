"""One raw keep-alive connection to an upstream: one HTTP/1.1 exchange at a time.

`UpstreamConnection` parses answers with httptools and hands each, or the `Failure` that came
instead (reset, timeout, a malformed answer), to the exchange waiting for it. Its pool
(`router.plane.pool`) opens, lends, takes back and expires connections; it is seen here only as
the `ConnectionKeeper` it is to a connection, so that the two modules do not import each other.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Protocol, cast

import httptools

from router.proxy.policy import Failure

TIMED_OUT = Failure("timeout", "no answer in time")

Reply = tuple[int, list[tuple[bytes, bytes]], bytes]
OnReply = Callable[["Reply | Failure"], None]


class ConnectionKeeper(Protocol):
    """What a connection needs of its pool: its loop, and to be watched and forgotten."""

    loop: asyncio.AbstractEventLoop

    def watch(self, connection: UpstreamConnection) -> None:
        """Check the new connection's deadlines until it is lost."""

    def forget(self, connection: UpstreamConnection) -> None:
        """Free the closed connection's place."""


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to an upstream, one exchange at a time."""

    def __init__(self, pool: ConnectionKeeper) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.loop = pool.loop
        """Held: on Python 3.11 each `get_running_loop()` costs a getpid system call."""
        self.transport: asyncio.Transport | None = None
        self.on_reply: OnReply | None = None
        self.reply_by = math.inf
        """When the exchange in progress times out (loop time; checked by the pool's tick)."""
        self.on_writable: Callable[[bool], None] | None = None
        """Told when the connection's write buffer fills (False) and drains (True)."""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.answer_started = False
        """Some byte of the current exchange's answer has arrived."""
        self.keep_alive = True
        """The last answer allows another exchange on this connection."""
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport; the pool checks the connection's deadlines from now on."""
        self.transport = cast(asyncio.Transport, transport)  # TCP (asyncio's or uvloop's)
        self.pool.watch(self)

    def data_received(self, data: bytes) -> None:
        """Feed the response parser."""
        self.answer_started = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self.keep_alive = False
            self._fail(Failure("reset", f"bad answer from upstream: {error}"))

    def on_header(self, name: bytes, value: bytes) -> None:
        """Collect a header."""
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        """Collect a piece of the body."""
        self.body.append(body)

    def on_message_complete(self) -> None:
        """Hand the whole answer to the exchange (interim 1xx answers are skipped)."""
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            self.headers, self.body = [], []
            return
        self.keep_alive = self.parser.should_keep_alive()
        answer = (status, self.headers, b"".join(self.body))
        self.headers, self.body = [], []
        on_reply, self.on_reply = self.on_reply, None
        if on_reply is not None:
            on_reply(answer)

    def connection_lost(self, exc: Exception | None) -> None:
        """Leave the pool; fail an exchange still waiting: the upstream went away."""
        self.keep_alive = False
        self.pool.forget(self)
        self._fail(Failure("reset", "upstream closed the connection"))

    def _fail(self, failure: Failure) -> None:
        on_reply, self.on_reply = self.on_reply, None
        if self.transport is not None:
            self.transport.close()
        if on_reply is not None:
            on_reply(failure)

    def time_out(self, now: float) -> None:
        """Fail the exchange in progress if its answer is overdue at `now`."""
        if self.on_reply is not None and now >= self.reply_by:
            self._fail(TIMED_OUT)

    @property
    def usable(self) -> bool:
        """Whether the connection can take another exchange."""
        return self.keep_alive and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        """Close the connection (its `connection_lost` follows)."""
        if self.transport is not None:
            self.transport.close()

    def pause_writing(self) -> None:
        """Pass on that the upstream is not keeping up."""
        if self.on_writable is not None:
            self.on_writable(False)

    def resume_writing(self) -> None:
        """Pass on that the upstream caught up."""
        if self.on_writable is not None:
            self.on_writable(True)

    def expect_reply(self, timeout: float, on_reply: OnReply) -> None:
        """Call `on_reply` once with the next answer, or a Failure (a timeout after `timeout`)."""
        self.on_reply = on_reply
        self.answer_started = False
        self.reply_by = self.loop.time() + timeout

    def expect_answer(self, timeout: float) -> asyncio.Future[Reply | Failure]:
        """Return a future of the next answer, or of the Failure that came instead."""
        waiter: asyncio.Future[Reply | Failure] = self.loop.create_future()
        self.expect_reply(timeout, settle_into(waiter))
        return waiter

    def send_bytes(self, data: bytes) -> None:
        """Write request bytes (a whole request, or a piece of one)."""
        assert self.transport is not None  # noqa: S101 (connected before use)
        self.transport.write(data)


def settle_into(waiter: asyncio.Future[Reply | Failure]) -> OnReply:
    """Return an `on_reply` callback that sets `waiter`'s result (unless it was cancelled)."""

    def settle(outcome: Reply | Failure) -> None:
        if not waiter.done():
            waiter.set_result(outcome)

    return settle
