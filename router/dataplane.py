"""The raw-bytes data plane (experimental, `--data-plane raw`): POST /invocations without aiohttp.

A listening asyncio Protocol parses requests with httptools. Plain `POST /invocations` bodies
are relayed to the chosen variant over pooled raw keep-alive sockets, with the same choice,
failover, retry budget, health and metrics as the aiohttp router; every other request (and
shadowed ones) is relayed, as bytes, to the aiohttp app listening on a loopback port, which
stays the one implementation of everything else.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlparse

import httptools
from aiohttp import web

from router.app import BUDGET, HEALTH, METRICS, RNG, SETTINGS, TABLE
from router.choosing import FORCE_HEADER, choose_variant
from router.config import RoutingConfig, Variant
from router.proxy import HOP_BY_HOP, RETRYABLE_STATUSES, Failure
from router.shadow import predictions_of

Reply = tuple[int, list[tuple[bytes, bytes]], bytes]
# `expect` too: the front answers 100-continue itself, so upstreams never send interim answers.
HOP_BY_HOP_BYTES = frozenset(name.encode() for name in HOP_BY_HOP) | {b"expect"}
REASONS = {200: b"OK", 400: b"Bad Request", 413: b"Payload Too Large", 503: b"Service Unavailable"}


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to an upstream, one exchange at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Reply] | None = None
        self.timer: asyncio.TimerHandle | None = None
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

    def send(self, data: bytes, timeout: float) -> Awaitable[Reply]:
        """Write one request; return the answer's future, failed with TimeoutError if late."""
        assert self.transport is not None  # noqa: S101 (connected before use)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Reply] = loop.create_future()
        self.waiter = waiter
        self.timer = loop.call_later(timeout, self._fail, TimeoutError("no answer in time"))
        self.transport.write(data)
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


def request_bytes(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
) -> bytes:
    """Serialize a request for an upstream, end-to-end headers only."""
    lines = [
        b"%s %s HTTP/1.1\r\nHost: upstream\r\nContent-Length: %d\r\n" % (method, target, len(body))
    ]
    lines += [n + b": " + v + b"\r\n" for n, v in headers if n.lower() not in HOP_BY_HOP_BYTES]
    return b"".join(lines) + b"\r\n" + body


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


class FrontProtocol(asyncio.Protocol):
    """A client connection: fast-path `POST /invocations`, relay the rest to the aiohttp app."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.previous: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        self.transport = cast(asyncio.Transport, transport)  # TCP (asyncio's or uvloop's)

    def data_received(self, data: bytes) -> None:
        """Feed the request parser; a malformed request closes the connection after a 400."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._write_error(
                400, b'{"error_code": "BAD_REQUEST", "message": "malformed HTTP request"}'
            )
            if self.transport is not None:
                self.transport.close()

    def on_message_begin(self) -> None:
        """Start a new request."""
        self.url, self.headers, self.body = b"", [], []

    def on_url(self, url: bytes) -> None:
        """Collect the target."""
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        """Collect a header."""
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        """Tell a client that waits for it (curl does, above 1 KiB) to send the body."""
        for name, value in self.headers:
            if name.lower() == b"expect" and value.lower() == b"100-continue":
                if self.transport is not None and not self.transport.is_closing():
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                break

    def on_body(self, body: bytes) -> None:
        """Collect a piece of the body."""
        self.body.append(body)

    def on_message_complete(self) -> None:
        """Answer requests in order (HTTP/1.1 pipelining keeps answers in request order)."""
        method = self.parser.get_method()
        request = (method, self.url, self.headers, b"".join(self.body))
        answering = self._answer(self.previous, self.parser.should_keep_alive(), *request)
        self.previous = asyncio.get_running_loop().create_task(answering)

    async def _answer(
        self,
        previous: asyncio.Future[None] | None,
        keep_alive: bool,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> None:
        data = await self.plane.handle(method, target, headers, body)
        if previous is not None:
            await previous
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            if not keep_alive:  # HTTP/1.0, or `Connection: close`
                self.transport.close()

    def _write_error(self, status: int, body: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(
                response_bytes(status, [(b"Content-Type", b"application/json")], body)
            )


def response_bytes(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """Serialize an answer for the client, end-to-end headers only, with its length."""
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"Status"))]
    lines += [n + b": " + v + b"\r\n" for n, v in headers if n.lower() not in HOP_BY_HOP_BYTES]
    lines.append(b"Content-Length: %d\r\n\r\n" % len(body))
    return b"".join(lines) + body


@dataclass
class DataPlane:
    """The fast path over the aiohttp app's state, and the relay to that app for the rest."""

    app: web.Application
    app_url: str
    pools: Pools = field(default_factory=Pools)

    def __post_init__(self) -> None:
        """Hold the app's long-lived parts directly: the hot path looks each up once."""
        app = self.app
        self.table, self.settings, self.metrics = app[TABLE], app[SETTINGS], app[METRICS]
        self.health, self.rng, self.budget = app[HEALTH], app[RNG], app[BUDGET]

    async def handle(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> bytes:
        """Answer one request, as bytes."""
        config = self.table.current
        if method != b"POST" or target != b"/invocations" or config.shadow.percent > 0:
            return await self._relay_to_app(method, target, headers, body)
        return await self._invocations(config, headers, body)

    async def _relay_to_app(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> bytes:
        outcome = await exchange_raw(
            self.pools.of(self.app_url),
            request_bytes(method, target, headers, body),
            self.settings.connect_timeout_s,
            self.settings.total_timeout_s + 5,
        )
        if isinstance(outcome, Failure):
            error = b'{"error_code": "INTERNAL_ERROR", "message": "router control app unreachable"}'
            return response_bytes(503, [(b"Content-Type", b"application/json")], error)
        status, answer_headers, answer = outcome
        return response_bytes(status, answer_headers, answer)

    async def _invocations(
        self, config: RoutingConfig, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> bytes:
        started = time.perf_counter()
        if len(body) > self.settings.max_body_bytes:
            message = b'{"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "body too large"}'
            return response_bytes(413, [(b"Content-Type", b"application/json")], message)
        variant = choose_variant(
            config, choice_headers(config, headers), self.rng, self.health.available(config)
        )
        budget = self.budget
        budget.in_flight += 1
        data = request_bytes(b"POST", b"/invocations", headers, body)
        try:
            outcome = await self._send(config, variant, data)
            if variant == "canary" and _retryable(outcome) and budget.allows():
                self.metrics.failovers.labels("canary").inc()
                budget.retrying += 1
                try:
                    variant = "stable"
                    outcome = await self._send(config, variant, data)
                finally:
                    budget.retrying -= 1
        finally:
            budget.in_flight -= 1
        version = config.upstream(variant).version
        tags = [(b"X-Model-Variant", variant.encode()), (b"X-Model-Version", version.encode())]
        if isinstance(outcome, Failure):
            status = 504 if outcome.reason == "timeout" else 503
            code = "DEADLINE_EXCEEDED" if status == 504 else "TEMPORARILY_UNAVAILABLE"
            text = f"the {variant} model server cannot be reached ({outcome.reason})"
            error = json.dumps({"error_code": code, "message": text}).encode()
            self.metrics.answered(variant, version, status, time.perf_counter() - started)
            return response_bytes(status, [(b"Content-Type", b"application/json"), *tags], error)
        status, answer_headers, answer = outcome
        self.metrics.answered(variant, version, status, time.perf_counter() - started)
        if status == 200:
            self.metrics.predicted(variant, predictions_of(answer) or ())
        return response_bytes(status, [*answer_headers, *tags], answer)

    async def _send(self, config: RoutingConfig, variant: Variant, data: bytes) -> Reply | Failure:
        settings = self.settings
        upstream = config.upstream(variant)
        outcome = await exchange_raw(
            self.pools.of(upstream.url), data, settings.connect_timeout_s, settings.total_timeout_s
        )
        health = self.health.of(upstream.url)
        if isinstance(outcome, Failure):
            self.metrics.upstream_errors.labels(variant, outcome.reason).inc()
            health.failed(outcome.reason, settings)
        elif outcome[0] >= 500:
            self.metrics.upstream_errors.labels(variant, "status_5xx").inc()
            health.failed(f"answered {outcome[0]}", settings)
        else:
            health.succeeded()
        return outcome


NO_HEADERS: dict[str, str] = {}


def choice_headers(config: RoutingConfig, headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Decode only the headers the variant choice reads (force, sticky), by their canonical name."""
    wanted = {FORCE_HEADER.lower().encode(): FORCE_HEADER} if config.force_header else {}
    if config.sticky is not None:
        wanted[config.sticky.header.lower().encode()] = config.sticky.header
    if not wanted:
        return NO_HEADERS
    found = {}
    for name, value in headers:
        canonical = wanted.get(name.lower())
        if canonical is not None and canonical not in found:
            found[canonical] = value.decode("latin-1")
    return found


def _retryable(outcome: Reply | Failure) -> bool:
    return isinstance(outcome, Failure) or outcome[0] in RETRYABLE_STATUSES


async def start_front(
    plane: DataPlane, host: str, port: int, *, reuse_port: bool = False
) -> asyncio.Server:
    """Listen for clients on `host:port` with the raw data plane in front of `plane.app`."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: FrontProtocol(plane), host, port, reuse_address=True, reuse_port=reuse_port or None
    )
