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
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from http import HTTPStatus
from typing import cast

import httptools
from aiohttp import web

from router.app import BUDGET, HEALTH, METRICS, RNG, SETTINGS, TABLE
from router.choosing import FORCE_HEADER, choose_variant
from router.config import RoutingConfig, Variant
from router.proxy import RETRYABLE_STATUSES, Failure
from router.rawpool import Pools, Reply, add_end_to_end, exchange, exchange_raw, spawn_then
from router.rawupload import StreamedUpload, upload_head
from router.shadow import predictions_of

STATUS_LINES = {int(s): b"HTTP/1.1 %d %s\r\n" % (s, s.phrase.encode()) for s in HTTPStatus}
"""Every standard status line, with its reason phrase (an upstream's status is passed on)."""
JSON_TYPE = [(b"Content-Type", b"application/json")]
log = logging.getLogger("router")


def request_bytes(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
) -> bytes:
    """Serialize a request for an upstream, end-to-end headers only."""
    lines = [
        b"%s %s HTTP/1.1\r\nHost: upstream\r\nContent-Length: %d\r\n" % (method, target, len(body))
    ]
    add_end_to_end(lines, headers)
    lines.append(b"\r\n")
    lines.append(body)
    return b"".join(lines)


class AnswerSlot:
    """One answer owed to a client: filled when ready, written in request order."""

    __slots__ = ("data", "keep_alive")

    def __init__(self, keep_alive: bool) -> None:
        self.data: bytes | None = None
        self.keep_alive = keep_alive


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
        self.answers: deque[AnswerSlot] = deque()
        """Answers owed, in request order (HTTP/1.1 pipelining)."""

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
        """Start answering; the answer is written once those of earlier requests are."""
        slot = AnswerSlot(self.parser.should_keep_alive())
        self.answers.append(slot)
        if self.upload is not None:
            upload, self.upload = self.upload, None
            upload.finish()
            spawn_then(self.plane.upload_answer(upload), partial(self._deliver, slot))
        else:
            method = self.parser.get_method()
            self.plane.handle(
                method, self.url, self.headers, b"".join(self.body), partial(self._deliver, slot)
            )

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop a body still being relayed."""
        if self.upload is not None:
            self.upload.abort()
            self.upload = None

    def _deliver(self, slot: AnswerSlot, data: bytes) -> None:
        """Fill `slot`; write every answer that is now at the head of the queue."""
        slot.data = data
        answers, transport = self.answers, self.transport
        while answers and (ready := answers[0].data) is not None:
            keep_alive = answers.popleft().keep_alive
            if transport is not None and not transport.is_closing():
                transport.write(ready)
                if not keep_alive:  # HTTP/1.0, or `Connection: close`
                    transport.close()

    def _write_error(self, status: int, body: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(response_bytes(status, JSON_TYPE, body))


def response_bytes(
    status: int, headers: list[tuple[bytes, bytes]], body: bytes, extra: bytes = b""
) -> bytes:
    """Serialize an answer for the client: end-to-end headers, `extra` header lines, length."""
    lines = [STATUS_LINES.get(status) or b"HTTP/1.1 %d Status\r\n" % status]
    add_end_to_end(lines, headers)
    lines.append(extra)
    lines.append(b"Content-Length: %d\r\n\r\n" % len(body))
    lines.append(body)
    return b"".join(lines)


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
        self.timeouts = (self.settings.connect_timeout_s, self.settings.total_timeout_s)
        self.tags: dict[tuple[Variant, str], bytes] = {}

    def handle(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        deliver: Callable[[bytes], None],
    ) -> None:
        """Answer one request: `deliver` is called once with the answer's bytes."""
        config = self.table.current
        if method == b"POST" and target == b"/invocations" and config.shadow.percent == 0:
            Invocation(self, config, deliver).start(headers, body)
            return
        spawn_then(self._relay_to_app(method, target, headers, body), deliver)

    def tag_lines(self, variant: Variant, version: str) -> bytes:
        """Return the `X-Model-Variant` and `X-Model-Version` header lines (made once a pair)."""
        lines = self.tags.get((variant, version))
        if lines is None:
            if len(self.tags) > 64:  # versions come and go with reloads: keep it small
                self.tags.clear()
            lines = b"X-Model-Variant: %s\r\nX-Model-Version: %s\r\n" % (
                variant.encode(),
                version.encode(),
            )
            self.tags[(variant, version)] = lines
        return lines

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
            return response_bytes(503, JSON_TYPE, error)
        status, answer_headers, answer = outcome
        return response_bytes(status, answer_headers, answer)


class Invocation:
    """One `POST /invocations` on the fast path: choose, send, fail over once, answer.

    Driven by callbacks from the upstream connection, so a request costs no task or future.
    """

    __slots__ = ("config", "data", "deliver", "plane", "retrying", "started", "variant")

    def __init__(
        self, plane: DataPlane, config: RoutingConfig, deliver: Callable[[bytes], None]
    ) -> None:
        self.plane, self.config, self.deliver = plane, config, deliver
        self.started = time.perf_counter()
        self.variant: Variant = "stable"
        self.data = b""
        self.retrying = False

    def start(self, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Check the body's size, choose the variant and send the request on."""
        plane, config = self.plane, self.config
        if len(body) > plane.settings.max_body_bytes:
            message = b'{"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "body too large"}'
            self.deliver(response_bytes(413, JSON_TYPE, message))
            return
        variant = choose_variant(
            config, choice_headers(config, headers), plane.rng, plane.health.available(config)
        )
        plane.budget.in_flight += 1
        self.data = request_bytes(b"POST", b"/invocations", headers, body)
        self._send(variant)

    def _send(self, variant: Variant) -> None:
        self.variant = variant
        plane = self.plane
        pool = plane.pools.of(self.config.upstream(variant).url)
        exchange(pool, self.data, plane.timeouts, self._replied)

    def _replied(self, outcome: Reply | Failure) -> None:
        """Settle the exchange; a bug in that answers 500, never leaves the client waiting."""
        try:
            self._settle(outcome)
        except Exception:
            log.exception("answering a proxied request failed")
            error = b'{"error_code": "INTERNAL_ERROR", "message": "router error"}'
            self.deliver(response_bytes(500, JSON_TYPE, error))

    def _settle(self, outcome: Reply | Failure) -> None:
        """Record the upstream's health; fail over to stable once, or answer the client."""
        plane, variant = self.plane, self.variant
        settings, metrics, budget = plane.settings, plane.metrics, plane.budget
        health = plane.health.of(self.config.upstream(variant).url)
        if type(outcome) is tuple:
            status = outcome[0]
            if status >= 500:
                metrics.upstream_errors.labels(variant, "status_5xx").inc()
                health.failed(f"answered {status}", settings)
            else:
                health.succeeded()
        else:
            failure = cast(Failure, outcome)
            metrics.upstream_errors.labels(variant, failure.reason).inc()
            health.failed(failure.reason, settings)
        if self.retrying:
            budget.retrying -= 1
        elif variant == "canary" and _retryable(outcome) and budget.allows():
            metrics.failovers.labels("canary").inc()
            budget.retrying += 1
            self.retrying = True
            self._send("stable")
            return
        budget.in_flight -= 1
        self.deliver(self._answer(outcome))

    def _answer(self, outcome: Reply | Failure) -> bytes:
        metrics, variant = self.plane.metrics, self.variant
        version = self.config.upstream(variant).version
        tags = self.plane.tag_lines(variant, version)
        elapsed = time.perf_counter() - self.started
        if isinstance(outcome, Failure):
            status = 504 if outcome.reason == "timeout" else 503
            code = "DEADLINE_EXCEEDED" if status == 504 else "TEMPORARILY_UNAVAILABLE"
            text = f"the {variant} model server cannot be reached ({outcome.reason})"
            error = json.dumps({"error_code": code, "message": text}).encode()
            metrics.answered(variant, version, status, elapsed)
            return response_bytes(status, JSON_TYPE, error, tags)
        status, answer_headers, answer = outcome
        metrics.answered(variant, version, status, elapsed)
        if status == 200:
            metrics.predicted(variant, predictions_of(answer) or ())
        return response_bytes(status, answer_headers, answer, tags)


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
