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
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlparse

from router.plane.upstream import TIMED_OUT, OnReply, Reply, UpstreamConnection, settle_into
from router.proxy.policy import Failure

T = TypeVar("T")
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


Lessee = Callable[[UpstreamConnection | Failure, bool], None]
"""Handed a connection (and whether it was reused) or why none could be had."""


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
