"""Large or chunked bodies on the raw data plane: relayed to the router's app as they arrive.

The raw front keeps small bodies in memory; a body above `stream_above_bytes` (or of unknown
length) goes piece by piece to the aiohttp app behind it, which streams it on to the variant.
The client is paused while the app cannot take more, so memory stays bounded.
"""

from __future__ import annotations

import asyncio

from router.plane.pool import UpstreamPool, lease
from router.plane.upstream import Reply, UpstreamConnection
from router.proxy.policy import Failure

PAUSE_CLIENT_ABOVE = 1024 * 1024
"""Bytes held for the app (before it is connected) past which the client is paused."""


class StreamedUpload:
    """One request relayed to an upstream while its body is still arriving from the client."""

    def __init__(
        self,
        pool: UpstreamPool,
        head: bytes,
        chunked: bool,
        client: asyncio.Transport,
        timeouts: tuple[float, float],
    ) -> None:
        self.pool, self.chunked, self.client = pool, chunked, client
        self.pending: list[bytes] = [head]
        self.pending_bytes = len(head)
        self.connection: UpstreamConnection | None = None
        self.finished = False
        self.answered = False
        self.answer: asyncio.Task[Reply | Failure] = asyncio.get_running_loop().create_task(
            self._exchange(*timeouts)
        )

    def feed(self, piece: bytes) -> None:
        """Pass on a piece of the body (as a chunk when the length is unknown)."""
        if self.answered or not piece:
            return  # the upstream has answered already: the rest of the body is not wanted
        self._write(b"%x\r\n%s\r\n" % (len(piece), piece) if self.chunked else piece)

    def finish(self) -> None:
        """Mark the body complete (the client sent all of it)."""
        self.finished = True
        if self.chunked and not self.answered:
            self._write(b"0\r\n\r\n")

    def abort(self) -> None:
        """Drop the exchange and its connection (the client went away)."""
        self.answer.cancel()
        if self.connection is not None and self.connection.transport is not None:
            self.connection.transport.close()

    def _write(self, data: bytes) -> None:
        connection = self.connection
        if connection is not None and connection.transport is not None:
            connection.transport.write(data)
            return
        self.pending.append(data)
        self.pending_bytes += len(data)
        if self.pending_bytes > PAUSE_CLIENT_ABOVE:
            self.client.pause_reading()

    async def _exchange(self, connect_timeout: float, total_timeout: float) -> Reply | Failure:
        try:
            connection = await lease(self.pool, connect_timeout)
            if isinstance(connection, Failure):
                return connection
            waiter = connection.expect_answer(total_timeout)
            connection.on_writable = self._client_may_send
            connection.send_bytes(b"".join(self.pending))
            self.pending, self.pending_bytes, self.connection = [], 0, connection
            self._client_may_send(True)
            reply = await waiter
            if isinstance(reply, Failure):
                return reply
            self.answered = True
            connection.on_writable = None
            if self.finished:
                self.pool.release(connection)
            elif connection.transport is not None:
                connection.transport.close()  # half a body sent: this connection is spent
            return reply
        finally:
            self.answered = True
            self._client_may_send(True)

    def _client_may_send(self, writable: bool) -> None:
        if self.client.is_closing():
            return
        if writable:
            self.client.resume_reading()
        else:
            self.client.pause_reading()
