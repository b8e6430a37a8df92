"""Pooled raw keep-alive connections to upstreams, one HTTP/1.1 exchange at a time each.

An exchange ends in one call of its `on_reply` callback with the answer or a `Failure`
(connect, reset, timeout): the hot path needs no task or future per request.

The pool keeps what nginx's upstream `keepalive` does: at most `limit` connections per upstream
(further exchanges wait in order for one to free up), idle ones closed after `idle_timeout`
(below the upstream's own keep-alive timeout, so the upstream is not the one to close them), an
answer with `Connection: close` or from HTTP/1.0 never reused, and a request whose reused
socket failed before any byte of the answer sent once more on a fresh socket: the upstream
closed an idle connection just as the router wrote on it, and nothing was run.

Its deadlines (an answer's, a waiter's, an idle connection's) are checked by one tick every
`TICK_S` while the pool has connections or waiters, not by a timer per exchange: a timer
started and cancelled for every request cost the hot path more than the rest of the pool.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast
from urllib.parse import urlparse

import httptools

from router.proxy.policy import Failure

T = TypeVar("T")
TIMED_OUT = Failure("timeout", "no answer in time")
TICK_S = 0.05
"""How often a pool checks its deadlines: each fires at most this late."""
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
Lessee = Callable[["UpstreamConnection | Failure", bool], None]
"""Handed a connection (and whether it was reused) or why none could be had."""


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to an upstream, one exchange at a time."""

    def __init__(self, pool: UpstreamPool) -> None:
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


@dataclass
class Waiting:
    """An exchange waiting for a connection while the pool is at its limit."""

    then: Lessee
    deadline: float


@dataclass
class UpstreamPool:
    """Keep-alive connections to one upstream host and port, at most `limit` of them."""

    host: str
    port: int
    limit: int = 256
    idle_timeout: float = 4.0
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    idle: list[UpstreamConnection] = field(default_factory=list)
    """Most recently used last: the freshest is reused first."""
    opened: int = 0
    """Connections open or being opened."""
    waiting: deque[Waiting] = field(default_factory=deque)
    members: set[UpstreamConnection] = field(default_factory=set)
    """Connections made and not yet lost: the tick checks their deadlines."""
    ticking: asyncio.TimerHandle | None = None

    def lease(self, within: float, then: Lessee, *, deadline: float | None = None) -> None:
        """Hand `then` a connection.

        An idle one at once, a new one once connected (within `within` seconds), or, at the
        limit, the next one freed before `deadline`.
        """
        connection = self.idle_connection()
        if connection is not None:
            then(connection, True)
        elif self.opened < self.limit:
            self.opened += 1
            spawn(self._open(within, then))
        else:
            when = deadline if deadline is not None else self.loop.time() + within
            self.waiting.append(Waiting(then, when))
            self._tick_soon()

    def idle_connection(self) -> UpstreamConnection | None:
        """Return a usable idle connection that has not been idle too long, if there is one."""
        expired_before = self.loop.time() - self.idle_timeout
        while self.idle:
            connection = self.idle.pop()
            if connection.usable and connection.idle_since > expired_before:
                return connection
            connection.close()
        return None

    def open_beyond_limit(self, within: float, then: Lessee) -> None:
        """Open a new connection even at the limit.

        The one retry of a keep-alive race: its failed connection is closing and about to free
        its place.
        """
        self.opened += 1
        spawn(self._open(within, then))

    async def _open(self, within: float, then: Lessee) -> None:
        """Connect, and hand `then` the connection or a connect Failure.

        A connection counts in `opened` from `lease` until it is lost (`forget`) or, when its
        transport never told the protocol it was made, until its connect failed here: the two
        never both count it down. A connection the upstream reset before this coroutine resumed
        is a connect failure too (nothing was sent on it): handed on, it would wait out the
        total timeout for an answer that cannot come.
        """
        made: list[UpstreamConnection] = []

        def protocol() -> UpstreamConnection:
            made.append(UpstreamConnection(self))
            return made[0]

        try:
            _, connection = await asyncio.wait_for(
                self.loop.create_connection(protocol, self.host, self.port), within
            )
        except (OSError, TimeoutError) as error:
            if not (made and made[0].transport is not None):  # else its connection_lost forgets it
                self.opened -= 1
                self._serve_waiting()
            then(Failure("connect", str(error) or type(error).__name__), False)
            return
        if not connection.usable:
            then(Failure("connect", "the upstream closed the connection as it opened"), False)
            return
        then(connection, False)

    def release(self, connection: UpstreamConnection) -> None:
        """Take a connection back after an exchange: the next waiter gets it, else it idles."""
        if not connection.usable:
            connection.close()
            return
        now = self.loop.time()
        while self.waiting:
            waiting = self.waiting.popleft()
            if waiting.deadline > now:
                waiting.then(connection, True)
                return
            waiting.then(TIMED_OUT, False)
        connection.idle_since = now
        self.idle.append(connection)

    def watch(self, connection: UpstreamConnection) -> None:
        """Check a new connection's deadlines on each tick until it is lost."""
        self.members.add(connection)
        self._tick_soon()

    def forget(self, connection: UpstreamConnection) -> None:
        """Free a closed connection's place (a waiter gets a new connection in it)."""
        self.opened -= 1
        self.members.discard(connection)
        if connection in self.idle:
            self.idle.remove(connection)
        self._serve_waiting()

    def _serve_waiting(self) -> None:
        now = self.loop.time()
        while self.waiting and self.opened < self.limit:
            waiting = self.waiting.popleft()
            if waiting.deadline <= now:
                waiting.then(TIMED_OUT, False)
                continue
            self.opened += 1
            spawn(self._open(waiting.deadline - now, waiting.then))

    def _tick_soon(self) -> None:
        if self.ticking is None:
            self.ticking = self.loop.call_later(TICK_S, self._tick)

    def _tick(self) -> None:
        """Check every deadline; tick again while there is anything left to check."""
        self.ticking = None
        self.expire()
        if self.members or self.waiting:
            self._tick_soon()

    def expire(self) -> None:
        """Time out overdue answers and waiters; close connections idle past `idle_timeout`."""
        now = self.loop.time()
        for connection in list(self.members):
            connection.time_out(now)
        for connection in [c for c in self.idle if c.idle_since <= now - self.idle_timeout]:
            connection.close()
        while self.waiting and self.waiting[0].deadline <= now:
            self.waiting.popleft().then(TIMED_OUT, False)

    def close(self) -> None:
        """Close every idle connection (the tick goes on while busy ones are open)."""
        for connection in list(self.idle):
            connection.close()
        self.idle.clear()


@dataclass
class Pools:
    """One pool per upstream base URL, each capped and expired alike."""

    limit: int = 256
    idle_timeout: float = 4.0
    by_url: dict[str, UpstreamPool] = field(default_factory=dict)

    def of(self, url: str) -> UpstreamPool:
        """Return (creating) the pool of `url`."""
        pool = self.by_url.get(url)
        if pool is None:
            parsed = urlparse(url)
            pool = UpstreamPool(
                parsed.hostname or "127.0.0.1", parsed.port or 80, self.limit, self.idle_timeout
            )
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
    once; otherwise a task connects first, or the request waits for a connection to free up.
    """
    connection = pool.idle_connection()
    if connection is not None:  # the usual case, without a callback of its own
        _send(pool, connection, data, timeouts, on_reply, True)
        return

    def leased(connection: UpstreamConnection | Failure, reused: bool) -> None:
        if isinstance(connection, Failure):
            on_reply(connection)
        else:
            _send(pool, connection, data, timeouts, on_reply, reused)

    pool.lease(timeouts[0], leased, deadline=pool.loop.time() + timeouts[1])


def _send(
    pool: UpstreamPool,
    connection: UpstreamConnection,
    data: bytes,
    timeouts: tuple[float, float],
    then: OnReply,
    reused: bool,
) -> None:
    def replied(outcome: Reply | Failure) -> None:
        if type(outcome) is tuple:  # an answer: the connection is free again (if kept alive)
            pool.release(connection)
        elif reused and not connection.answer_started and outcome is not TIMED_OUT:
            # A keep-alive race: the upstream closed the idle socket as the request went out.
            pool.open_beyond_limit(timeouts[0], fresh)
            return
        then(outcome)

    def fresh(connection: UpstreamConnection | Failure, _reused: bool) -> None:
        if isinstance(connection, Failure):
            then(connection)
        else:
            _send(pool, connection, data, timeouts, then, False)

    connection.expect_reply(timeouts[1], replied)
    connection.send_bytes(data)


async def exchange_raw(
    pool: UpstreamPool, data: bytes, connect_timeout: float, total_timeout: float
) -> Reply | Failure:
    """One exchange over the pool, awaited: the answer, or connect / reset / timeout."""
    waiter: asyncio.Future[Reply | Failure] = pool.loop.create_future()
    exchange(pool, data, (connect_timeout, total_timeout), settle_into(waiter))
    return await waiter


async def lease(pool: UpstreamPool, within: float) -> UpstreamConnection | Failure:
    """Await a connection from the pool (a new one when none is idle)."""
    waiter: asyncio.Future[UpstreamConnection | Failure] = pool.loop.create_future()

    def leased(connection: UpstreamConnection | Failure, _reused: bool) -> None:
        if waiter.done():  # the one waiting went away: give the connection back
            if not isinstance(connection, Failure):
                pool.release(connection)
        else:
            waiter.set_result(connection)

    pool.lease(within, leased)
    return await waiter


def settle_into(waiter: asyncio.Future[Reply | Failure]) -> OnReply:
    """Return an `on_reply` callback that sets `waiter`'s result (unless it was cancelled)."""

    def settle(outcome: Reply | Failure) -> None:
        if not waiter.done():
            waiter.set_result(outcome)

    return settle
