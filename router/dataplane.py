"""The raw-bytes data plane (the default, `--data-plane raw`): POST /invocations without aiohttp.

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

import httptools
from aiohttp import web

from router.app import BUDGET, HEALTH, METRICS, RNG, SETTINGS, TABLE
from router.choosing import FORCE_HEADER, choose_variant
from router.config import RoutingConfig, Variant
from router.proxy import RETRYABLE_STATUSES, Failure
from router.rawpool import HOP_BY_HOP_BYTES, Pools, Reply, exchange_raw
from router.rawupload import StreamedUpload, upload_head
from router.shadow import predictions_of

REASONS = {200: b"OK", 400: b"Bad Request", 413: b"Payload Too Large", 503: b"Service Unavailable"}


def request_bytes(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
) -> bytes:
    """Serialize a request for an upstream, end-to-end headers only."""
    lines = [
        b"%s %s HTTP/1.1\r\nHost: upstream\r\nContent-Length: %d\r\n" % (method, target, len(body))
    ]
    lines += [n + b": " + v + b"\r\n" for n, v in headers if n.lower() not in HOP_BY_HOP_BYTES]
    return b"".join(lines) + b"\r\n" + body


class FrontProtocol(asyncio.Protocol):
    """A client connection: fast-path `POST /invocations`, relay the rest to the aiohttp app."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.upload: StreamedUpload | None = None
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
        """Answer `Expect: 100-continue`; start relaying a large or chunked body at once."""
        length: int | None = None
        chunked = False
        for name, value in self.headers:
            lowered = name.lower()
            if lowered == b"expect" and value.lower() == b"100-continue":
                if self.transport is not None and not self.transport.is_closing():
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            elif lowered == b"content-length":
                length = int(value)  # httptools has checked it is a number
            elif lowered == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if self.transport is not None and (
            chunked or (length is not None and length > self.plane.settings.stream_above_bytes)
        ):
            self.upload = self.plane.start_upload(
                self.parser.get_method(), self.url, self.headers, length, self.transport
            )

    def on_body(self, body: bytes) -> None:
        """Collect a piece of the body, or pass it on when it is being relayed."""
        if self.upload is not None:
            self.upload.feed(body)
        else:
            self.body.append(body)

    def on_message_complete(self) -> None:
        """Answer requests in order (HTTP/1.1 pipelining keeps answers in request order)."""
        answer: Awaitable[bytes]
        if self.upload is not None:
            self.upload.finish()
            answer, self.upload = self.plane.upload_answer(self.upload), None
        else:
            method = self.parser.get_method()
            answer = self.plane.handle(method, self.url, self.headers, b"".join(self.body))
        answering = self._answer(self.previous, self.parser.should_keep_alive(), answer)
        self.previous = asyncio.get_running_loop().create_task(answering)

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop a body still being relayed."""
        if self.upload is not None:
            self.upload.abort()
            self.upload = None

    async def _answer(
        self, previous: asyncio.Future[None] | None, keep_alive: bool, answer: Awaitable[bytes]
    ) -> None:
        data = await answer
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

    def start_upload(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        length: int | None,
        client: asyncio.Transport,
    ) -> StreamedUpload:
        """Begin relaying a request to the aiohttp app while its body arrives."""
        head = upload_head(method, target, headers, length)
        timeouts = (self.settings.connect_timeout_s, self.settings.total_timeout_s + 5)
        return StreamedUpload(self.pools.of(self.app_url), head, length is None, client, timeouts)

    async def upload_answer(self, upload: StreamedUpload) -> bytes:
        """Wait for the app's answer to a relayed upload; return it as bytes for the client."""
        return self._from_app(await upload.answer)

    async def _relay_to_app(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> bytes:
        outcome = await exchange_raw(
            self.pools.of(self.app_url),
            request_bytes(method, target, headers, body),
            self.settings.connect_timeout_s,
            self.settings.total_timeout_s + 5,
        )
        return self._from_app(outcome)

    def _from_app(self, outcome: Reply | Failure) -> bytes:
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
