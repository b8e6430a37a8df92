"""The router's public port as HTTP/1.1 peers see it, on both planes: raw sockets where the
bytes matter, real upstream servers on loopback, limits and timeouts as nginx and uvicorn keep
them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import resource
import socket
import struct
import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from common.predictionlog import read_predictions
from contracts.routing import RoutingConfig, write_routing_file
from router.plane.dataplane import Front
from router.plane.pool import UpstreamPool, exchange_raw
from router.proxy.policy import Failure
from router.settings import RouterSettings
from router.web.app import create_app
from tests.routers import running_front, wait_until

BODY = json.dumps({"dataframe_records": [{"x": 1.0}]}).encode()
PLANES = ["raw", "aiohttp"]


@dataclass
class Upstream:
    """A model-server stand-in that records what reached it and how many at once."""

    version: str = "1"
    gate: asyncio.Event | None = None
    """While set to an unset event, requests wait at it (in flight at the upstream)."""
    answer_headers: dict[str, str] = field(default_factory=dict)
    close_each: bool = False
    """Answer every request with `Connection: close`."""
    seen: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    peers: set[int] = field(default_factory=set)
    """Client ports of the connections requests came on."""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/invocations", self.invocations)
        app.router.add_get("/ping", self.ping)
        return app

    async def invocations(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            body = await request.read()
            self.seen.append((dict(request.headers), body))
            peer = request.transport.get_extra_info("peername") if request.transport else None
            if peer:
                self.peers.add(peer[1])
            if self.gate is not None:
                await self.gate.wait()
            echo = request.headers.get("X-Echo", "")
            response = web.json_response(
                {"predictions": [1.0]},
                headers={"X-Model-Version": self.version, "X-Echo": echo, **self.answer_headers},
            )
            if self.close_each:
                response.force_close()
            return response
        finally:
            self.in_flight -= 1

    async def ping(self, _request: web.Request) -> web.Response:
        return web.Response(text="\n")


@dataclass
class Router:
    """A router in-process on a free loopback port, in front of one upstream (stable)."""

    port: int
    upstream: Upstream
    registry: CollectorRegistry
    front: Front

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 20)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0


RouterFactory = Callable[..., Awaitable[Router]]


@pytest.fixture(params=PLANES)
async def make_router(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[RouterFactory]:
    """Start a router (raw or aiohttp plane) with the given settings before an `Upstream`."""
    stack: list[Any] = []

    async def make(
        upstream: Upstream | None = None,
        upstream_runner: dict[str, Any] | None = None,
        log_percent: float = 0.0,
        **settings: Any,
    ) -> Router:
        upstream = upstream or Upstream()
        server = TestServer(upstream.app(), host="127.0.0.1", **(upstream_runner or {}))
        await server.start_server()
        stack.append(server)
        path = tmp_path / "routing.yaml"
        url = str(server.make_url("")).rstrip("/")
        write_routing_file(
            path,
            RoutingConfig.model_validate(
                {
                    "model": "M",
                    "stable": {"url": url, "version": "1"},
                    "log": {"percent": log_percent},
                }
            ),
        )
        registry = CollectorRegistry()
        app = create_app(
            RouterSettings(config_path=path, **{"health_interval_s": 0.5, **settings}),
            registry=registry,
            rng=random.Random(0),
        )
        front = running_front(app, fast_path=request.param == "raw")
        stack.append(front)
        started = await front.__aenter__()
        return Router(started.port, upstream, registry, started)

    yield make
    for item in reversed(stack):
        if isinstance(item, TestServer):
            await item.close()
        else:
            await item.__aexit__(None, None, None)


def post(body: bytes = BODY, *, extra: bytes = b"", version: bytes = b"1.1") -> bytes:
    """A `POST /invocations` as bytes."""
    host = b"Host: router\r\n" if version == b"1.1" else b""
    return (
        b"POST /invocations HTTP/%s\r\n%sContent-Type: application/json\r\n%s"
        b"Content-Length: %d\r\n\r\n%s" % (version, host, extra, len(body), body)
    )


@dataclass
class Answer:
    """One answer read off the wire."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]


async def read_answer(reader: asyncio.StreamReader, *, head_only: bool = False) -> Answer:
    """Read one answer framed by Content-Length (a HEAD answer has no body)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
    headers = [(k.strip(), v.strip()) for k, v in (line.split(":", 1) for line in lines)]
    length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
    body = b"" if head_only else await asyncio.wait_for(reader.readexactly(length), 30)
    return Answer(int(status_line.split(" ")[1]), headers, body)


async def closed(reader: asyncio.StreamReader) -> bool:
    """Wait for the router to close the connection (EOF, or a reset)."""
    try:
        return await asyncio.wait_for(reader.read(), 30) == b""
    except ConnectionResetError:
        return True


# --- protocol edges -----------------------------------------------------------------------


async def test_head_is_answered_with_the_head_only(make_router: RouterFactory) -> None:
    """HEAD /ping and /health: the GET's status and length, no body, the connection reusable."""
    router = await make_router()
    reader, writer = await router.connect()
    for target in (b"/ping", b"/health"):
        writer.write(b"HEAD %s HTTP/1.1\r\nHost: r\r\n\r\n" % target)
        answer = await read_answer(reader, head_only=True)
        assert answer.status == 200
        assert int(answer.header("Content-Length")[0]) > 0
    writer.write(b"GET /ping HTTP/1.1\r\nHost: r\r\n\r\n")
    assert (await read_answer(reader)).body == b"\n"  # no stray body bytes came before it
    writer.close()


async def test_a_malformed_request_waits_its_turn(make_router: RouterFactory) -> None:
    """A pipelined request, then garbage: the first answer comes whole, then the 400, then
    the connection closes."""
    upstream = Upstream(gate=asyncio.Event())
    router = await make_router(upstream)
    reader, writer = await router.connect()
    writer.write(post() + b"NOT HTTP AT ALL\r\n\r\n")
    await wait_until(lambda: upstream.in_flight == 1, "the first request at the upstream")
    upstream.gate.set()  # type: ignore[union-attr]
    first = await read_answer(reader)
    assert (first.status, json.loads(first.body)) == (200, {"predictions": [1.0]})
    refused = await read_answer(reader)
    assert refused.status == 400
    assert json.loads(refused.body)["error_code"] == "BAD_REQUEST"
    assert refused.header("Connection") == ["close"]
    assert await closed(reader)
    writer.close()


async def test_bytes_after_a_closing_request_are_ignored(make_router: RouterFactory) -> None:
    """After `Connection: close`, a second request in the same write is never run."""
    router = await make_router()
    reader, writer = await router.connect()
    writer.write(post(extra=b"Connection: close\r\n") + post())
    answer = await read_answer(reader)
    assert answer.status == 200 and answer.header("Connection") == ["close"]
    assert await closed(reader)
    assert len(router.upstream.seen) == 1
    writer.close()


async def test_an_upgrade_request_is_served_plainly_with_its_body(
    make_router: RouterFactory,
) -> None:
    """`Connection: Upgrade` with a body: the upstream gets the whole body, the connection
    stays HTTP/1.1 and serves the next request; a chunked one is refused with 501."""
    router = await make_router()
    reader, writer = await router.connect()
    upgrade = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\n"
    writer.write(post(extra=upgrade) + post(extra=b"X-Echo: second\r\n"))
    assert (await read_answer(reader)).status == 200
    second = await read_answer(reader)
    assert second.status == 200 and second.header("X-Echo") == ["second"]
    assert [body for _, body in router.upstream.seen] == [BODY, BODY]
    assert all("Upgrade" not in headers for headers, _ in router.upstream.seen)
    writer.write(
        b"POST /invocations HTTP/1.1\r\nHost: r\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    refused = await read_answer(reader)
    assert refused.status == 501
    assert json.loads(refused.body)["error_code"] == "NOT_IMPLEMENTED"
    assert await closed(reader)
    writer.close()


async def test_http10_clients(make_router: RouterFactory) -> None:
    """HTTP/1.0: no 100 Continue (it does not know it), keep-alive answered as such, and a
    plain 1.0 request closed after its answer."""
    router = await make_router()
    reader, writer = await router.connect()
    expecting = post(extra=b"Expect: 100-continue\r\nConnection: keep-alive\r\n", version=b"1.0")
    writer.write(expecting + post(extra=b"Connection: keep-alive\r\n", version=b"1.0"))
    for _ in range(2):
        answer = await read_answer(reader)
        assert answer.status == 200  # not 100
        assert answer.header("Connection") == ["keep-alive"]
    writer.write(post(version=b"1.0"))
    answer = await read_answer(reader)
    assert answer.status == 200 and answer.header("Connection") == ["close"]
    assert await closed(reader)
    writer.close()


@pytest.mark.parametrize(
    "hosts", [b"", b"Host: a\r\nHost: b\r\n"], ids=["without Host", "with two"]
)
async def test_http11_needs_exactly_one_host(make_router: RouterFactory, hosts: bytes) -> None:
    """An HTTP/1.1 request without Host, or with two, is a 400 naming the rule."""
    router = await make_router()
    reader, writer = await router.connect()
    writer.write(b"GET /ping HTTP/1.1\r\n%s\r\n" % hosts)
    answer = await read_answer(reader)
    assert answer.status == 400
    assert "Host" in json.loads(answer.body)["message"]
    writer.close()


async def test_hop_by_hop_headers_are_stripped_both_ways(make_router: RouterFactory) -> None:
    """Hop-by-hop headers and those named in Connection never cross the router; X-Model-*
    appear once, set by the router (the client's and the upstream's dropped)."""
    upstream = Upstream(
        version="77",
        answer_headers={
            "Connection": "X-Up-Private",
            "X-Up-Private": "1",
            "X-Model-Variant": "bogus",
            "Keep-Alive": "timeout=5",
            "X-Kept": "yes",
        },
    )
    router = await make_router(upstream)
    reader, writer = await router.connect()
    writer.write(
        post(
            extra=b"Connection: keep-alive, X-Private\r\nX-Private: secret\r\nKeep-Alive: 300\r\n"
            b"TE: trailers\r\nProxy-Authorization: x\r\nX-Model-Version: 9\r\nX-Kept: yes\r\n"
        )
    )
    answer = await read_answer(reader)
    writer.close()
    ((received, _),) = upstream.seen
    lowered = {name.lower() for name in received}
    assert {"x-private", "keep-alive", "te", "proxy-authorization", "x-model-version"}.isdisjoint(
        lowered
    )
    assert received["X-Kept"] == "yes"
    assert answer.header("X-Model-Version") == ["1"]
    assert answer.header("X-Model-Variant") == ["stable"]
    assert answer.header("X-Up-Private") == [] and answer.header("Keep-Alive") == []
    assert answer.header("X-Kept") == ["yes"]


# --- limits -------------------------------------------------------------------------------


async def test_a_head_over_16_kib_is_431_and_never_relayed(make_router: RouterFactory) -> None:
    """A 100 KiB header is refused with 431 in MLflow's shape; the upstream sees nothing."""
    router = await make_router()
    reader, writer = await router.connect()
    writer.write(post(extra=b"X-Big: %s\r\n" % (b"a" * 100 * 1024)))
    answer = await read_answer(reader)
    assert answer.status == 431
    assert json.loads(answer.body)["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert await closed(reader)
    assert router.upstream.seen == []
    writer.close()


async def test_more_than_100_headers_is_431(make_router: RouterFactory) -> None:
    """100 headers pass; 101 are refused."""
    router = await make_router()

    async def with_headers(count: int) -> int:
        reader, writer = await router.connect()
        lines = b"".join(b"X-H%d: v\r\n" % i for i in range(count - 3))  # + Host, type, length
        writer.write(post(extra=lines))
        status = (await read_answer(reader)).status
        writer.close()
        return status

    assert await with_headers(100) == 200
    assert await with_headers(101) == 431


async def test_a_header_that_never_ends_is_cut_off(make_router: RouterFactory) -> None:
    """A header trickled in without end: 431 once the head passes 16 KiB (memory bounded),
    and the client, still sending, gets that answer rather than a reset."""
    router = await make_router()
    reader, writer = await router.connect()
    writer.write(b"POST /invocations HTTP/1.1\r\nHost: r\r\nX-Endless: ")
    for _ in range(64):
        writer.write(b"a" * 1024)
        await writer.drain()
    assert (await read_answer(reader)).status == 431
    assert router.upstream.seen == []
    writer.close()


async def test_a_declared_body_over_the_limit_is_413_before_it_is_sent(
    make_router: RouterFactory,
) -> None:
    """Content-Length over --max-body-mb: 413 answered to the head alone."""
    router = await make_router(max_body_bytes=64 * 1024)
    reader, writer = await router.connect()
    writer.write(b"POST /invocations HTTP/1.1\r\nHost: r\r\nContent-Length: 1000000000\r\n\r\n")
    answer = await read_answer(reader)
    assert answer.status == 413
    assert "1000000000" in json.loads(answer.body)["message"]
    assert await closed(reader)
    writer.close()


async def test_pipelined_requests_reach_the_upstream_one_at_a_time(
    make_router: RouterFactory,
) -> None:
    """24 requests in one write: never more than one at the upstreams, answered in order."""
    router = await make_router()
    reader, writer = await router.connect()
    writer.write(b"".join(post(extra=b"X-Echo: %d\r\n" % i) for i in range(24)))
    echoes = [(await read_answer(reader)).header("X-Echo") for _ in range(24)]
    writer.close()
    assert echoes == [[str(i)] for i in range(24)]
    assert router.upstream.most_in_flight == 1
    assert len(router.upstream.peers) == 1


async def test_upstream_connections_are_capped_and_queued(make_router: RouterFactory) -> None:
    """32 clients at once with --upstream-connections 4: at most 4 connections to the
    upstream, every request answered."""
    upstream = Upstream(gate=asyncio.Event())
    router = await make_router(upstream, upstream_connections=4)

    async def one() -> int:
        reader, writer = await router.connect()
        writer.write(post())
        status = (await read_answer(reader)).status
        writer.close()
        return status

    clients = [asyncio.create_task(one()) for _ in range(32)]
    await wait_until(lambda: upstream.in_flight == 4, "4 requests at the upstream")
    upstream.gate.set()  # type: ignore[union-attr]
    assert await asyncio.gather(*clients) == [200] * 32
    assert upstream.most_in_flight == 4
    assert len(upstream.peers) <= 4


# --- the upstream pool --------------------------------------------------------------------


async def _load(router: Router, clients: int, each: int) -> list[int]:
    """`clients` keep-alive connections sending `each` requests one after another."""

    async def client() -> list[int]:
        reader, writer = await router.connect()
        statuses = []
        for _ in range(each):
            writer.write(post())
            statuses.append((await read_answer(reader)).status)
        writer.close()
        return statuses

    results = await asyncio.gather(*(client() for _ in range(clients)))
    return [status for statuses in results for status in statuses]


async def test_an_upstream_answering_connection_close_costs_nothing(
    make_router: RouterFactory,
) -> None:
    """8 clients x 250 requests to an upstream closing after every answer: all 200."""
    router = await make_router(Upstream(close_each=True))
    assert await _load(router, 8, 250) == [200] * 2000
    assert (
        router.value("mlcanary_upstream_errors_total", {"variant": "stable", "reason": "reset"})
        == 0
    )


async def test_an_upstream_closing_idle_connections_costs_nothing(
    make_router: RouterFactory,
) -> None:
    """The upstream closes connections idle for 1 s (uvicorn does after 5 s); traffic comes in
    bursts with pauses past that: no request fails."""
    upstream = Upstream()
    router = await make_router(
        upstream, upstream_runner={"keepalive_timeout": 1.0}, health_interval_s=3600
    )
    for _ in range(3):
        assert await _load(router, 8, 20) == [200] * 160
        used = frozenset(upstream.peers)
        upstream.peers.clear()
        # The pause: until the upstream has closed every connection it had (idle for 1 s).
        await wait_until(partial(_all_closed, used), "upstream closed idle ones")


def _all_closed(ports: frozenset[int]) -> bool:
    """Tell whether none of these client ports has an established TCP connection (/proc)."""
    return not _established(ports)


def _established(ports: frozenset[int]) -> set[int]:
    open_ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if fields[3] == "01" and local_port in ports:  # 01: ESTABLISHED
                open_ports.add(local_port)
    return open_ports


async def _race_server(closed_on: list[int]) -> tuple[asyncio.Server, str]:
    """An upstream that answers one request per connection keeping it alive, then closes the
    connection as the next request arrives on it, without answering: the keep-alive race."""
    answer = json.dumps({"predictions": [1.0]}).encode()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answered = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if head.startswith(b"GET /ping"):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n\n")
                    continue
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                if answered:
                    closed_on.append(answered)
                    writer.transport.abort()
                    return
                answered += 1
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer)
                )
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


@pytest.mark.parametrize("plane", PLANES)
async def test_a_keep_alive_race_is_retried_on_a_fresh_connection(
    plane: str, tmp_path: Path
) -> None:
    """A reused connection that fails before any answer byte is sent again on a new one:
    every request answered 200 by stable, no failover, nothing spent from the retry budget."""
    closed_on: list[int] = []
    server, url = await _race_server(closed_on)
    path = tmp_path / "routing.yaml"
    write_routing_file(
        path, RoutingConfig.model_validate({"model": "M", "stable": {"url": url, "version": "1"}})
    )
    registry = CollectorRegistry()
    app = create_app(RouterSettings(config_path=path), registry=registry)
    try:
        async with running_front(app, fast_path=plane == "raw") as front:
            router = Router(front.port, Upstream(), registry, front)
            assert await _load(router, 1, 20) == [200] * 20
    finally:
        server.close()
    assert len(closed_on) >= 10  # the race happened on every reuse
    assert (
        registry.get_sample_value(
            "mlcanary_requests_total", {"variant": "stable", "version": "1", "code": "200"}
        )
        == 20
    )
    assert not registry.get_sample_value("mlcanary_failovers_total", {"from_variant": "canary"})


class ResettingServer:
    """A listener on a thread of its own that resets each connection as soon as it accepts it.

    On its own thread, the reset often reaches the router between the connection being made and
    the pool's connect resuming: the race a model server killed mid-connect causes.
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.port: int = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._reset_each, daemon=True)
        self.thread.start()

    def _reset_each(self) -> None:
        while True:
            try:
                accepted, _ = self.listener.accept()
            except OSError:  # closed: the test is over
                return
            accepted.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            accepted.close()

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(timeout=30)


async def test_a_connection_reset_as_it_opens_fails_at_once() -> None:
    """Each of 500 exchanges with an upstream that resets every connection ends in a connect or
    reset failure, never in waiting out the total timeout on a connection already gone; and
    the pool counts every connection back (none is counted down twice)."""
    server = ResettingServer()
    pool = UpstreamPool("127.0.0.1", server.port, limit=4)
    reasons: Counter[str] = Counter()
    try:
        for _ in range(500):
            outcome = await exchange_raw(pool, post(), connect_timeout=1, total_timeout=10)
            assert isinstance(outcome, Failure), outcome
            reasons[outcome.reason] += 1
        await wait_until(lambda: pool.opened == 0, "every connection counted back")
    finally:
        server.close()
    assert set(reasons) <= {"connect", "reset"}, reasons


# --- connection lifecycle -----------------------------------------------------------------


async def test_slowloris_connections_are_closed_by_the_header_timeout(
    make_router: RouterFactory,
) -> None:
    """500 connections each sending a head that never completes are all closed."""
    router = await make_router(header_timeout_s=0.5)
    connections = [await router.connect() for _ in range(500)]
    for _, writer in connections:
        writer.write(b"POST /invocations HTTP/1.1\r\nHost: r\r\nX-Slow: ")
    assert all(await asyncio.gather(*(closed(reader) for reader, _ in connections)))
    reader, writer = await router.connect()
    writer.write(post())
    assert (await read_answer(reader)).status == 200
    for _, open_writer in [*connections, (reader, writer)]:
        open_writer.close()


async def test_idle_connections_are_closed_by_the_keepalive_timeout(
    make_router: RouterFactory,
) -> None:
    """2,000 connections left idle after an answer are all closed by the keep-alive timeout."""
    _raise_open_files(4 * 2000 + 200)
    router = await make_router(keepalive_timeout_s=0.5)

    async def answered_then_idle() -> bool:
        reader, writer = await router.connect()
        writer.write(b"GET /ping HTTP/1.1\r\nHost: r\r\n\r\n")
        assert (await read_answer(reader)).status == 200
        try:
            return await closed(reader)
        finally:
            writer.close()

    assert all(await asyncio.gather(*(answered_then_idle() for _ in range(2000))))


async def test_silent_connections_are_closed_by_the_header_timeout(
    make_router: RouterFactory,
) -> None:
    """Connections that never send a byte are closed once the header timeout passes."""
    router = await make_router(header_timeout_s=0.5)
    connections = [await router.connect() for _ in range(200)]
    assert all(await asyncio.gather(*(closed(reader) for reader, _ in connections)))
    for _, writer in connections:
        writer.close()


async def test_a_slow_body_is_closed_by_the_body_timeout(make_router: RouterFactory) -> None:
    """A body that stops arriving is dropped after --body-timeout; nothing reaches the model."""
    router = await make_router(body_timeout_s=0.5)
    reader, writer = await router.connect()
    writer.write(b'POST /invocations HTTP/1.1\r\nHost: r\r\nContent-Length: 100\r\n\r\n{"da')
    assert await closed(reader)
    assert router.upstream.seen == []
    writer.close()


async def test_a_trickled_body_is_closed_by_its_total_deadline(
    make_router: RouterFactory,
) -> None:
    """A body sent a byte every 50 ms never pauses past the timeout, yet is cut when its whole
    deadline passes (a per-chunk timeout would wait out the 100 bytes): counted, never relayed."""
    router = await make_router(body_timeout_s=0.5)
    reader, writer = await router.connect()
    writer.write(b"POST /invocations HTTP/1.1\r\nHost: r\r\nContent-Length: 100\r\n\r\n")

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            for _ in range(100):
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(0.05)  # the client's pace, not a wait for the router

    trickling = asyncio.create_task(trickle())
    assert await closed(reader)
    assert not trickling.done()  # cut while still sending
    trickling.cancel()
    assert router.upstream.seen == []
    assert router.value("mlcanary_client_limits_total", {"limit": "body_timeout"}) == 1
    writer.close()


async def test_200_trickling_bodies_hold_nothing_anyone_else_needs(
    make_router: RouterFactory,
) -> None:
    """200 connections trickling chunked bodies to /predict and /feedback: the router buffers
    them itself (no connection to its app is held for them), and /health and /invocations are
    answered meanwhile."""
    router = await make_router()
    connections = [await router.connect() for _ in range(200)]
    for number, (_, writer) in enumerate(connections):
        path = b"/predict" if number % 2 else b"/feedback"
        writer.write(
            b"POST %s HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer t\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'a\r\n{"feature"\r\n' % path  # a first chunk of 10 bytes
        )
    bodies = router.front.connections.bodies
    await wait_until(
        lambda: bodies.held == 200 * 10, f"every trickled chunk held by the router {bodies}"
    )
    app_pool = router.front.plane.pools.of(router.front.plane.app_url)
    assert app_pool.opened - len(app_pool.idle) == 0  # no connection to the app is theirs
    reader, writer = await router.connect()
    writer.write(b"GET /health HTTP/1.1\r\nHost: r\r\n\r\n")
    assert (await read_answer(reader)).status == 200
    writer.write(post())
    assert (await read_answer(reader)).status == 200
    for _, trickling in connections:
        trickling.write(b"1\r\n:\r\n")  # still sending
    writer.close()
    for _, trickling in connections:
        trickling.close()
    await wait_until(lambda: bodies.held == 0, "their bytes given back as they went")


async def test_bodies_held_across_connections_are_bounded(make_router: RouterFactory) -> None:
    """With room for 1,024 bytes of incomplete bodies, a second 600-byte body arriving while the
    first is held is refused (503, counted); the first completes and is answered."""
    router = await make_router(max_buffered_bytes=1024)
    body = json.dumps({"dataframe_records": [{"x": "y" * 700}]}).encode()
    assert 600 < len(body) < 1024
    first_reader, first = await router.connect()
    first.write(post(body)[: -len(body) + 500])
    bodies = router.front.connections.bodies
    await wait_until(lambda: bodies.held == 500, "the first body's bytes held")
    second_reader, second = await router.connect()
    second.write(post(body)[: -len(body) + 600])
    refused = await read_answer(second_reader)
    assert refused.status == 503 and b"limit of request bodies" in refused.body
    first.write(body[500:])
    assert (await read_answer(first_reader)).status == 200
    assert router.value("mlcanary_client_limits_total", {"limit": "buffered"}) == 1
    assert bodies.held == 0
    first.close()
    second.close()


async def test_2000_held_connections_starve_no_request(make_router: RouterFactory) -> None:
    """2,000 idle connections held (within the defaults), a normal request is still served."""
    _raise_open_files(4 * 2000 + 200)
    router = await make_router()
    connections = await asyncio.gather(*(router.connect() for _ in range(2000)))
    reader, writer = await router.connect()
    writer.write(post())
    assert (await read_answer(reader)).status == 200
    for _, held in [*connections, (reader, writer)]:
        held.close()


async def test_connections_beyond_the_limit_are_closed_at_once(
    make_router: RouterFactory,
) -> None:
    """With --max-connections 100, the 50 connections past it are closed without a byte;
    the 100 held ones are served."""
    router = await make_router(max_connections=100)
    held = [await router.connect() for _ in range(100)]
    extra = [await router.connect() for _ in range(50)]
    assert all(await asyncio.gather(*(closed(reader) for reader, _ in extra)))
    reader, writer = held[-1]
    writer.write(post())
    assert (await read_answer(reader)).status == 200
    for _, writer in held + extra:
        writer.close()


def _raise_open_files(needed: int) -> None:
    """Allow this process `needed` open files (both ends of each test connection are ours)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.fail(f"the test needs {needed} open files; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


# --- request ids --------------------------------------------------------------------------


async def test_every_answer_carries_one_request_id(make_router: RouterFactory) -> None:
    """A new id for every request, whatever the client sent: on predictions (passed to the
    model server, whose own copy is dropped), on /predict's body too, on the router's own pages,
    on a 404 and on a refused request; a client's usable id kept beside it, never as it."""
    upstream = Upstream(
        answer_headers={"X-Request-Id": "the-upstream-s", "X-Client-Request-Id": "upstream's"}
    )
    router = await make_router(upstream)
    reader, writer = await router.connect()

    async def ask(request: bytes) -> Answer:
        writer.write(request)
        return await read_answer(reader)

    def sent(name: str) -> str | None:
        """A header the model server got with the last request."""
        return {k.lower(): v for k, v in upstream.seen[-1][0].items()}.get(name)

    given = await ask(post(extra=b"X-Request-Id: client-id-1\r\n"))
    (given_id,) = given.header("X-Request-Id")
    assert given.status == 200 and len(given_id) == 32 and sent("x-request-id") == given_id
    assert given.header("X-Client-Request-Id") == ["client-id-1"]
    assert sent("x-client-request-id") == "client-id-1"
    again = await ask(post(extra=b"X-Request-Id: client-id-1\r\n"))
    assert again.header("X-Request-Id") != [given_id]  # one request, one id
    made = await ask(post(extra=b"X-Client-Request-Id: forged\r\n"))
    (made_id,) = made.header("X-Request-Id")
    assert len(made_id) == 32 and sent("x-request-id") == made_id
    assert made.header("X-Client-Request-Id") == [] and sent("x-client-request-id") is None
    replaced = await ask(post(extra=b"X-Request-Id: " + b"x" * 201 + b"\r\n"))
    (replaced_id,) = replaced.header("X-Request-Id")
    assert len(replaced_id) == 32 and sent("x-request-id") == replaced_id
    assert replaced.header("X-Client-Request-Id") == []
    features = json.dumps({"features": {"x": 1.0}}).encode()
    predicted = await ask(
        b"POST /predict HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\n"
        b"X-Request-Id: client-id-2\r\nContent-Length: %d\r\n\r\n%s" % (len(features), features)
    )
    (predicted_id,) = predicted.header("X-Request-Id")
    assert predicted.status == 200 and predicted_id not in ("client-id-2", given_id)
    assert json.loads(predicted.body)["request_id"] == predicted_id
    assert predicted.header("X-Client-Request-Id") == ["client-id-2"]
    for target in (b"/ping", b"/metrics", b"/nowhere"):
        answer = await ask(b"GET %s HTTP/1.1\r\nHost: r\r\n\r\n" % target)
        assert len(answer.header("X-Request-Id")) == 1, (target, answer.headers)
    ids = {made_id, replaced_id}
    ids |= {
        (await ask(b"GET /ping HTTP/1.1\r\nHost: r\r\n\r\n")).header("X-Request-Id")[0]
        for _ in range(20)
    }
    assert len(ids) == 22  # each new id is new
    too_many = b"".join(b"X-H%d: v\r\n" % i for i in range(120))
    refused = await ask(post(extra=b"X-Request-Id: client-id-3\r\n" + too_many))
    assert refused.status == 431 and len(refused.header("X-Request-Id")[0]) == 32
    assert refused.header("X-Client-Request-Id") == ["client-id-3"]
    writer.close()


async def test_answers_are_recorded_in_the_prediction_log(
    make_router: RouterFactory, tmp_path: Path
) -> None:
    """At `log.percent` 100 every 200 is recorded off the request path: id, variant, version,
    the inputs as sent and the predictions."""
    folder = tmp_path / "predictions"
    router = await make_router(log_percent=100, prediction_log=folder)
    reader, writer = await router.connect()
    ids = []
    for extra in (b"X-Request-Id: first\r\n", b""):
        writer.write(post(extra=extra))
        ids += (await read_answer(reader)).header("X-Request-Id")
    features = json.dumps({"features": {"x": 2.0}}).encode()
    writer.write(
        b"POST /predict HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(features), features)
    )
    ids += (await read_answer(reader)).header("X-Request-Id")
    writer.close()
    await wait_until(lambda: len(list(read_predictions(folder))) >= 3, "three records written")
    # The writer thread counts a batch once it is on disk: a reader may see the file first.
    written = {"result": "written"}
    await wait_until(lambda: router.value("mlcanary_prediction_log_records_total", written) >= 3,
                     "three records counted")  # fmt: skip
    records = list(read_predictions(folder))
    assert [r.request_id for r in records] == ids and "first" not in ids
    assert [r.client_id for r in records] == ["first", None, None]
    assert {(r.variant, r.version) for r in records} == {("stable", "1")}
    assert [r.inputs for r in records] == [json.loads(BODY), json.loads(BODY),
                                           {"dataframe_split": {"columns": ["x"],
                                                                "data": [[2.0]]}}]  # fmt: skip
    assert [r.predictions for r in records] == [[1.0]] * 3
    assert router.value("mlcanary_prediction_log_records_total", {"result": "written"}) == 3
