"""Pooled raw keep-alive connections to upstreams, one HTTP/1.1 exchange at a time each.

An exchange ends in one call of its `on_reply` callback with the answer or a `Failure`
(connect, reset, timeout): the hot path needs no task or future per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast
from urllib.parse import urlparse

import httptools

from router.proxy import HOP_BY_HOP, Failure

T = TypeVar("T")
TIMED_OUT = Failure("timeout", "no answer in time")
RUNNING: set[asyncio.Task[None]] = set()
"""Tasks started by callbacks, held so the garbage collector cannot drop one mid-flight."""


def spawn(work: Coroutine[Any, Any, None]) -> None:
    """Run `work` as a task that is kept alive until it ends."""
    task = asyncio.get_running_loop().create_task(work)
    RUNNING.add(task)
    task.add_done_callback(RUNNING.discard)


def spawn_then(result: Awaitable[T], then: Callable[[T], None]) -> None:
    """Await `result` in a task of its own and pass it to `then`."""

    async def waiting() -> None:
        then(await result)

    spawn(waiting())


Reply = tuple[int, list[tuple[bytes, bytes]], bytes]
OnReply = Callable[["Reply | Failure"], None]
# `expect` too: the front answers 100-continue itself, so upstreams never send interim answers.
HOP_BY_HOP_BYTES = frozenset(name.encode() for name in HOP_BY_HOP) | {b"expect"}


def add_end_to_end(lines: list[bytes], headers: list[tuple[bytes, bytes]]) -> None:
    """Append a `Name: value` line for each end-to-end header (hop-by-hop ones dropped)."""
    for name, value in headers:
        if name.lower() not in HOP_BY_HOP_BYTES:
            lines.append(b"%s: %s\r\n" % (name, value))


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to an upstream, one exchange at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.loop = asyncio.get_running_loop()
        """Held: on Python 3.11 each `get_running_loop()` costs a getpid system call."""
        self.transport: asyncio.Transport | None = None
        self.on_reply: OnReply | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.on_writable: Callable[[bool], None] | None = None
        """Told when the connection's write buffer fills (False) and drains (True)."""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        self.transport = cast(asyncio.Transport, transport)  # TCP (asyncio's or uvloop's)

    def data_received(self, data: bytes) -> None:
        """Feed the response parser."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
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
        answer = (status, self.headers, b"".join(self.body))
        self.headers, self.body = [], []
        on_reply, self.on_reply = self.on_reply, None
        self._stop_timer()
        if on_reply is not None:
            on_reply(answer)

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail an exchange still waiting: the upstream went away."""
        self._fail(Failure("reset", "upstream closed the connection"))

    def _fail(self, failure: Failure) -> None:
        on_reply, self.on_reply = self.on_reply, None
        self._stop_timer()
        if self.transport is not None:
            self.transport.close()
        if on_reply is not None:
            on_reply(failure)

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    @property
    def usable(self) -> bool:
        """Whether the connection can take another exchange."""
        return self.transport is not None and not self.transport.is_closing()

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
        self.timer = self.loop.call_later(timeout, self._fail, TIMED_OUT)

    def expect_answer(self, timeout: float) -> asyncio.Future[Reply | Failure]:
        """Return a future of the next answer, or of the Failure that came instead."""
        waiter: asyncio.Future[Reply | Failure] = self.loop.create_future()
        self.expect_reply(timeout, settle_into(waiter))
        return waiter

    def send_bytes(self, data: bytes) -> None:
        """Write request bytes (a whole request, or a piece of one)."""
        assert self.transport is not None  # noqa: S101 (connected before use)
        self.transport.write(data)


@dataclass
class UpstreamPool:
    """Idle keep-alive connections to one upstream host and port."""

    host: str
    port: int
    idle: list[UpstreamConnection] = field(default_factory=list)

    def idle_connection(self) -> UpstreamConnection | None:
        """Return a usable idle connection, if there is one."""
        while self.idle:
            connection = self.idle.pop()
            if connection.usable:
                return connection
        return None

    async def connect(self, within: float) -> UpstreamConnection | Failure:
        """Open a new connection within `within` seconds, or say why not (a connect Failure)."""
        loop = asyncio.get_running_loop()
        opening = loop.create_connection(UpstreamConnection, self.host, self.port)
        try:
            _, connection = await asyncio.wait_for(opening, within)
        except (OSError, TimeoutError) as error:
            return Failure("connect", str(error) or type(error).__name__)
        return connection

    def release(self, connection: UpstreamConnection) -> None:
        """Keep a connection for the next exchange."""
        if connection.usable:
            self.idle.append(connection)

    def close(self) -> None:
        """Close every idle connection."""
        for connection in self.idle:
            if connection.transport is not None:
                connection.transport.close()
        self.idle.clear()


@dataclass
class Pools:
    """One pool per upstream base URL."""

    by_url: dict[str, UpstreamPool] = field(default_factory=dict)

    def of(self, url: str) -> UpstreamPool:
        """Return (creating) the pool of `url`."""
        pool = self.by_url.get(url)
        if pool is None:
            parsed = urlparse(url)
            pool = UpstreamPool(parsed.hostname or "127.0.0.1", parsed.port or 80)
            self.by_url[url] = pool
        return pool

    def close(self) -> None:
        """Close every pool."""
        for pool in self.by_url.values():
            pool.close()


def exchange(
    pool: UpstreamPool, data: bytes, timeouts: tuple[float, float], on_reply: OnReply
) -> None:
    """Send one request over the pool; call `on_reply` once with the answer or a Failure.

    `timeouts` are (connect, total) seconds. With an idle connection the request is written at
    once; otherwise a task connects first. A connection that answered goes back to the pool.
    """
    connection = pool.idle_connection()
    if connection is None:
        spawn(_connect_and_send(pool, data, timeouts, on_reply))
        return
    _send(pool, connection, data, timeouts[1], on_reply)


def _send(
    pool: UpstreamPool, connection: UpstreamConnection, data: bytes, timeout: float, then: OnReply
) -> None:
    def replied(outcome: Reply | Failure) -> None:
        if type(outcome) is tuple:  # an answer: the connection is free again
            pool.release(connection)
        then(outcome)

    connection.expect_reply(timeout, replied)
    connection.send_bytes(data)


async def _connect_and_send(
    pool: UpstreamPool, data: bytes, timeouts: tuple[float, float], on_reply: OnReply
) -> None:
    connection = await pool.connect(timeouts[0])
    if isinstance(connection, Failure):
        on_reply(connection)
        return
    _send(pool, connection, data, timeouts[1], on_reply)


async def exchange_raw(
    pool: UpstreamPool, data: bytes, connect_timeout: float, total_timeout: float
) -> Reply | Failure:
    """One exchange over the pool, awaited: the answer, or connect / reset / timeout."""
    waiter: asyncio.Future[Reply | Failure] = asyncio.get_running_loop().create_future()
    exchange(pool, data, (connect_timeout, total_timeout), settle_into(waiter))
    return await waiter


def settle_into(waiter: asyncio.Future[Reply | Failure]) -> OnReply:
    """Return an `on_reply` callback that sets `waiter`'s result (unless it was cancelled)."""

    def settle(outcome: Reply | Failure) -> None:
        if not waiter.done():
            waiter.set_result(outcome)

    return settle
