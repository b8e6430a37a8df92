"""Prototype of the planned raw-bytes data plane, kept to reproduce its figure. Not the router.

Run: python bench/raw_proxy_prototype.py PORT STABLE_PORT CANARY_PORT
then drive http://127.0.0.1:PORT/invocations with wrk. It parses requests with httptools,
picks stable or canary (90/10), relays over pooled raw keep-alive upstream connections and adds
the X-Model-* headers; it has none of the router's failover, health, metrics or limits. On this
machine it spent 0.033-0.061 ms of CPU per request (nginx: 0.016-0.023 ms), against the
aiohttp router's 0.25-0.50 ms; see docs/benchmarks.md. router/plane/dataplane.py grew out of it;
this bare version stays as the yardstick of what the mechanism itself costs.
"""

from __future__ import annotations

import asyncio
import random
import sys

import httptools
import uvloop

HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"host", b"content-length"}
VERSIONS = (b"1", b"2")
VARIANTS = (b"stable", b"canary")


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to an upstream, one request at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes]] | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        waiter, self.waiter = self.waiter, None
        answer = (self.parser.get_status_code(), self.headers, b"".join(self.body))
        self.headers, self.body = [], []
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionResetError())

    def send(self, data: bytes) -> asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes]]:
        self.waiter = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(data)
        return self.waiter


class Pool:
    """Idle keep-alive connections to one upstream."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[UpstreamConnection] = []

    async def acquire(self) -> UpstreamConnection:
        while self.idle:
            connection = self.idle.pop()
            if connection.transport is not None and not connection.transport.is_closing():
                return connection
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(UpstreamConnection, "127.0.0.1", self.port)
        return connection


class Client(asyncio.Protocol):
    """One client connection: parse requests, relay each to the chosen upstream."""

    def __init__(self, pools: tuple[Pool, Pool]) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.pools = pools
        self.transport: asyncio.Transport | None = None
        self.url, self.headers, self.body = b"", [], []  # type: ignore[var-annotated]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url, self.headers, self.body = b"", [], []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        request = (self.url, self.headers, b"".join(self.body))
        asyncio.get_running_loop().create_task(self.relay(*request))

    async def relay(self, url: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        variant = 1 if random.random() < 0.1 else 0  # noqa: S311 (traffic split)
        pool = self.pools[variant]
        head = [b"POST %s HTTP/1.1\r\nHost: upstream\r\nContent-Length: %d\r\n" % (url, len(body))]
        head += [
            name + b": " + value + b"\r\n"
            for name, value in headers
            if name.lower() not in HOP_BY_HOP
        ]
        connection = await pool.acquire()
        status, answer_headers, answer = await connection.send(b"".join(head) + b"\r\n" + body)
        pool.idle.append(connection)
        out = [b"HTTP/1.1 %d OK\r\n" % status]
        out += [n + b": " + v + b"\r\n" for n, v in answer_headers if n.lower() not in HOP_BY_HOP]
        out.append(
            b"X-Model-Variant: %s\r\nX-Model-Version: %s\r\nContent-Length: %d\r\n\r\n"
            % (VARIANTS[variant], VERSIONS[variant], len(answer))
        )
        out.append(answer)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))


async def serve(port: int, stable: int, canary: int) -> None:
    pools = (Pool(stable), Pool(canary))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(pools), "127.0.0.1", port)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
