"""Pooled raw keep-alive connections to upstreams, one HTTP/1.1 exchange at a time each."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlparse

import httptools

from router.proxy import HOP_BY_HOP, Failure

Reply = tuple[int, list[tuple[bytes, bytes]], bytes]
# `expect` too: the front answers 100-continue itself, so upstreams never send interim answers.
HOP_BY_HOP_BYTES = frozenset(name.encode() for name in HOP_BY_HOP) | {b"expect"}


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to an upstream, one exchange at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Reply] | None = None
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
            self._fail(ConnectionResetError(f"bad answer from upstream: {error}"))

    def on_header(self, name: bytes, value: bytes) -> None:
        """Collect a header."""
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        """Collect a piece of the body."""
        self.body.append(body)

    def on_message_complete(self) -> None:
        """Hand the whole answer to the waiting exchange (interim 1xx answers are skipped)."""
        if 100 <= self.parser.get_status_code() < 200:
            self.headers, self.body = [], []
            return
        answer = (self.parser.get_status_code(), self.headers, b"".join(self.body))
        self.headers, self.body = [], []
        waiter, self.waiter = self.waiter, None
        self._stop_timer()
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail an exchange still waiting: the upstream went away."""
        self._fail(ConnectionResetError("upstream closed the connection"))

    def _fail(self, error: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        self._stop_timer()
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        if self.transport is not None:
            self.transport.close()

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

    def expect_answer(self, timeout: float) -> asyncio.Future[Reply]:
        """Return the next answer's future, failed with TimeoutError if it is not in by then."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Reply] = loop.create_future()
        self.waiter = waiter
        self.timer = loop.call_later(timeout, self._fail, TimeoutError("no answer in time"))
        return waiter

    def send_bytes(self, data: bytes) -> None:
        """Write request bytes (a whole request, or a piece of one)."""
        assert self.transport is not None  # noqa: S101 (connected before use)
        self.transport.write(data)

    def send(self, data: bytes, timeout: float) -> Awaitable[Reply]:
        """Write one request; return the answer's future, failed with TimeoutError if late."""
        waiter = self.expect_answer(timeout)
        self.send_bytes(data)
        return waiter


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

    async def connect(self, within: float) -> UpstreamConnection:
        """Open a new connection within `within` seconds."""
        loop = asyncio.get_running_loop()
        opening = loop.create_connection(UpstreamConnection, self.host, self.port)
        _, connection = await asyncio.wait_for(opening, within)
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


async def exchange_raw(
    pool: UpstreamPool, data: bytes, connect_timeout: float, total_timeout: float
) -> Reply | Failure:
    """One exchange over the pool: the answer, or connect / reset / timeout."""
    connection = pool.idle_connection()
    if connection is None:
        try:
            connection = await pool.connect(connect_timeout)
        except (OSError, TimeoutError) as error:
            return Failure("connect", str(error) or type(error).__name__)
    try:
        reply = await connection.send(data, total_timeout)
    except TimeoutError:
        return Failure("timeout", "no answer in time")
    except ConnectionError as error:
        return Failure("reset", str(error))
    pool.release(connection)
    return reply
