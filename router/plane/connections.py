"""Every open client connection: the limit, one periodic sweep of deadlines, the drain.

`Connections` refuses connections beyond `max_connections`, closes those past their header,
body or keep-alive deadline (one periodic sweep rather than a timer per request), holds the
budget of bodies being received across connections (`bodies.BodyBudget`), and drains them on
shutdown: idle ones close at once, busy ones after their last answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from router.plane.bodies import BodyBudget

if TYPE_CHECKING:
    from router.settings import RouterSettings


class Tracked(Protocol):
    """What the sweep and the drain ask of a connection (`connection.ClientConnection`)."""

    transport: asyncio.Transport | None

    def expire(self, now: float) -> None:
        """Close the connection if it is past its deadline with no answer owed."""

    def drain(self) -> None:
        """Close now if idle; otherwise after the answers owed."""


@dataclass
class Connections:
    """Every open client connection: the limit, the timeout sweep, and the drain on shutdown."""

    settings: RouterSettings
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    open: set[Tracked] = field(default_factory=set)
    now: float = 0.0
    """The loop's time at the last sweep: deadlines are set from it (no clock call per
    request), so they hold to within one sweep interval."""
    _empty: asyncio.Event = field(default_factory=asyncio.Event)
    _sweeper: asyncio.Task[None] | None = None
    bodies: BodyBudget = field(init=False)
    """Bytes of incomplete bodies held by all connections (see `router.plane.bodies`)."""

    def __post_init__(self) -> None:
        """Bound the bodies held across connections."""
        self.bodies = BodyBudget(self.settings.max_buffered_bytes)

    def admit(self, connection: Tracked) -> bool:
        """Track a new connection, unless the limit is reached (then it is to be closed)."""
        if len(self.open) >= self.settings.max_connections:
            return False
        self.open.add(connection)
        self._empty.clear()
        if self._sweeper is None:
            self.now = self.loop.time()
            self._sweeper = self.loop.create_task(self._sweep())
        return True

    def forget(self, connection: Tracked) -> None:
        """Stop tracking a closed connection."""
        self.open.discard(connection)
        if not self.open:
            self._empty.set()

    def sweep_interval(self) -> float:
        """Return a quarter of the shortest timeout (50 ms to 1 s): deadlines fire that late."""
        settings = self.settings
        shortest = min(
            settings.header_timeout_s, settings.keepalive_timeout_s, settings.body_timeout_s
        )
        return min(1.0, max(0.05, shortest / 4))

    async def _sweep(self) -> None:
        interval = self.sweep_interval()
        while True:
            await asyncio.sleep(interval)
            now = self.now = self.loop.time()
            for connection in list(self.open):
                connection.expire(now)

    async def drain(self, within: float) -> int:
        """Close idle connections, let busy ones answer what they owe, abort the rest.

        Busy connections get `within` seconds; return how many had to be aborted then.
        """
        for connection in list(self.open):
            connection.drain()
        if self.open:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._empty.wait(), within)
        left = list(self.open)
        for connection in left:
            if connection.transport is not None:
                connection.transport.abort()
        return len(left)

    async def close(self) -> None:
        """Stop the sweep."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
