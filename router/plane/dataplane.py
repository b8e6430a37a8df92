"""The router's data plane on its public port: connections in front, the aiohttp app behind.

Every client connection is a `connection.ClientConnection` (lifecycle, limits, ordered answers),
whichever plane is chosen. With the raw plane (the default) a plain `POST /invocations` is
relayed to the chosen variant over pooled raw keep-alive sockets; every other request, shadowed
ones, and all requests on the aiohttp plane are relayed as bytes to the aiohttp app listening on
a loopback port, which stays the one implementation of everything else. Both proxy through
`policy.ProxyPolicy`, so the same outcome gets the same answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from aiohttp import web

from contracts.errors import error_body
from contracts.routing import Protocol, RoutingConfig, Variant
from router.plane.connection import ClientConnection
from router.plane.connections import Connections
from router.plane.handler import Deliver, Refusal
from router.plane.pool import Pools, exchange, exchange_raw, spawn_then
from router.plane.upload import StreamedUpload
from router.plane.upstream import Reply
from router.plane.wire import JSON_TYPE, request_bytes, response_bytes, upload_head
from router.proxy import requestids as request_ids
from router.proxy.policy import Failure, failure_answer
from router.routing.choosing import FORCE_HEADER, FORCE_TOKEN_HEADER
from router.routing.protocols import unspoken, v2_infer_target, v2_upstream_target
from router.web.feedback import FEEDBACK_PATH, feedback_refusal
from router.web.state import POLICY, SETTINGS, TABLE

log = logging.getLogger("router")


@dataclass
class DataPlane:
    """The fast path over the aiohttp app's state, and the relay to that app for the rest."""

    app: web.Application
    app_url: str
    fast_path: bool = True
    """False: the aiohttp plane (every request through the app)."""
    pools: Pools = field(init=False)

    def __post_init__(self) -> None:
        """Hold the app's long-lived parts directly: the hot path looks each up once."""
        app = self.app
        self.table, self.settings, self.policy = app[TABLE], app[SETTINGS], app[POLICY]
        self.metrics = self.policy.metrics
        self.timeouts = (self.settings.connect_timeout_s, self.settings.total_timeout_s)
        self.tags: dict[tuple[Variant, str], bytes] = {}
        self.pools = Pools(self.settings.upstream_connections, self.settings.upstream_keepalive_s)

    def handle(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        deliver: Deliver,
        request_id: bytes = b"",
    ) -> None:
        """Answer one request: `deliver` is called once with the answer's bytes."""
        config = self.table.current
        if self.fast_path and method == b"POST" and config.shadow.percent == 0:
            protocol: Protocol | None = None
            if target == b"/invocations":
                protocol = "mlflow"
            elif target == v2_infer_target(config):
                protocol = "v2"
            # A protocol a variant does not speak is refused by the app, in its own words.
            if protocol is not None and unspoken(config, protocol) is None:
                Invocation(self, config, deliver, request_id, protocol).start(headers, body)
                return
        head_only = method == b"HEAD"  # asked of the app as a GET: its answer has a body
        relayed = self._relay_to_app(b"GET" if head_only else method, target, headers, body)
        spawn_then(relayed, lambda outcome: deliver(self._from_app(outcome, head_only)))

    def refusal(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], length: int | None
    ) -> Refusal | None:
        """Refuse what a path's own bounds refuse by the head alone (see `web.feedback`)."""
        if method != b"POST" or target.partition(b"?")[0] != FEEDBACK_PATH.encode():
            return None  # other methods get the app's 405
        refused = feedback_refusal(headers, length)
        if refused is not None and refused[0] == 413:
            self.count_limit("labels_size")
        return refused

    def count_limit(self, limit: str) -> None:
        """Count a client bound hit."""
        self.metrics.client_limits.labels(limit).inc()

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

    def feed_upload(self, upload: StreamedUpload, piece: bytes) -> None:
        """Pass on a piece of an upload's body."""
        upload.feed(piece)

    def finish_upload(self, upload: StreamedUpload, deliver: Deliver) -> None:
        """Deliver the app's answer to an upload once its body is complete."""
        upload.finish()
        spawn_then(upload.answer, lambda outcome: deliver(self._from_app(outcome)))

    def abort_upload(self, upload: StreamedUpload) -> None:
        """Drop an upload (its client went away, or its request was refused)."""
        upload.abort()

    async def _relay_to_app(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> Reply | Failure:
        return await exchange_raw(
            self.pools.of(self.app_url),
            request_bytes(method, target, headers, body, to_app=True),
            self.settings.connect_timeout_s,
            self.settings.total_timeout_s + 5,
        )

    def _from_app(self, outcome: Reply | Failure, head_only: bool = False) -> bytes:
        if isinstance(outcome, Failure):
            error = error_body("INTERNAL_ERROR", "router control app unreachable")
            return response_bytes(503, JSON_TYPE, error)
        status, answer_headers, answer = outcome
        return response_bytes(status, answer_headers, answer, head_only=head_only, from_router=True)


class Invocation:
    """One scoring request on the fast path: choose, send, fail over once, answer.

    `POST /invocations`, or V2's infer (`protocol`), sent to each variant at its own path for
    the protocol. Driven by callbacks from the upstream connection, so a request costs no task
    or future.
    """

    __slots__ = (
        "body", "client_id", "config", "data", "deliver", "forced", "headers", "plane",
        "protocol", "request_id", "retrying", "started", "variant",
    )  # fmt: skip

    def __init__(
        self,
        plane: DataPlane,
        config: RoutingConfig,
        deliver: Deliver,
        request_id: bytes,
        protocol: Protocol = "mlflow",
    ) -> None:
        self.plane, self.config, self.deliver = plane, config, deliver
        self.request_id, self.body = request_id, b""
        self.protocol = protocol
        self.started = time.perf_counter()
        self.variant: Variant = "stable"
        self.data = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.retrying = self.forced = False
        self.client_id = b""

    def start(self, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Choose the variant and send the request on."""
        plane, config = self.plane, self.config
        self.body = body
        if self.protocol == "mlflow":  # the same path on every variant: written once
            self.data = request_bytes(b"POST", b"/invocations", headers, body)
        else:
            self.headers = headers
        asked = choice_headers(config, headers)
        choice = plane.policy.choose(config, asked)
        self.forced = choice.forced
        self.client_id = asked.get(CLIENT_ID, "").encode("latin-1")
        self._send(choice.variant)

    def _send(self, variant: Variant) -> None:
        self.variant = variant
        plane = self.plane
        if self.protocol == "v2":  # each variant at its own path: written per send
            path = v2_upstream_target(self.config, variant)
            self.data = request_bytes(b"POST", path, self.headers, self.body)
        pool = plane.pools.of(self.config.upstream(variant).url)
        exchange(pool, self.data, plane.timeouts, self._replied)

    def _replied(self, outcome: Reply | Failure) -> None:
        """Settle the exchange; a bug in that answers 500, never leaves the client waiting."""
        try:
            status = outcome if isinstance(outcome, Failure) else outcome[0]
            retry = self.plane.policy.settle(
                self.config, self.variant, status, first_try=not self.retrying
            )
            if retry is not None:
                self.retrying = True
                self._send(retry)
                return
            answer = self._answer(outcome)
        except Exception:
            log.exception("answering a proxied request failed")
            answer = response_bytes(500, JSON_TYPE, error_body("INTERNAL_ERROR", "router error"))
        self.deliver(answer)

    def _answer(self, outcome: Reply | Failure) -> bytes:
        variant = self.variant
        version = self.config.upstream(variant).version
        tags = self.plane.tag_lines(variant, version)
        if isinstance(outcome, Failure):
            status, error = failure_answer(variant, outcome, self.protocol)
            self.plane.policy.answered(
                variant, version, status, self.started, None, forced=self.forced
            )
            return response_bytes(status, JSON_TYPE, error, tags)
        status, answer_headers, answer = outcome
        logged = (self.request_id, self.body, self.client_id)
        self.plane.policy.answered(
            variant, version, status, self.started, answer, logged, forced=self.forced
        )
        return response_bytes(status, answer_headers, answer, tags)


CLIENT_ID = request_ids.CLIENT_HEADER.decode()


_names_for: list[tuple[RoutingConfig, dict[bytes, str]]] = []
"""The last config and its `_choice_header_names` (a config changes only on a reload; kept by
identity, as hashing a config costs more than the work saved)."""


def _choice_header_names(config: RoutingConfig) -> dict[bytes, str]:
    """Map the lowered names of the headers `config`'s choice reads to their canonical names."""
    if _names_for and _names_for[0][0] is config:
        return _names_for[0][1]
    wanted = {
        FORCE_HEADER.lower().encode(): FORCE_HEADER,  # read also when off, to count refusals
        FORCE_TOKEN_HEADER.lower().encode(): FORCE_TOKEN_HEADER,
        request_ids.CLIENT_LOWERED: CLIENT_ID,  # for the prediction log, in the same pass
    }
    if config.sticky is not None:
        wanted[config.sticky.header.lower().encode()] = config.sticky.header
    _names_for[:] = [(config, wanted)]
    return wanted


def choice_headers(config: RoutingConfig, headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Decode the headers the choice reads (force, sticky) and the client's id, by canonical name.

    Only those: the hot path decodes nothing else.
    """
    wanted = _choice_header_names(config)
    found = {}
    for name, value in headers:
        canonical = wanted.get(name.lower())
        if canonical is not None and canonical not in found:
            found[canonical] = value.decode("latin-1")
    return found


@dataclass
class Front:
    """The listening socket, its connections and the plane behind them."""

    server: asyncio.Server
    connections: Connections
    plane: DataPlane

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self.server.sockets[0].getsockname()[1])

    async def shutdown(self, drain_timeout: float) -> int:
        """Stop accepting, drain connections (see `Connections.drain`), close upstream pools.

        Return how many connections were still busy at the deadline (and were aborted).
        """
        self.server.close()  # stop accepting; on 3.12+ wait_closed() would wait for clients
        aborted = await self.connections.drain(drain_timeout)
        await self.connections.close()
        self.plane.pools.close()
        return aborted


async def start_front(plane: DataPlane, host: str, port: int, *, reuse_port: bool = False) -> Front:
    """Listen for clients on `host:port` with the data plane in front of `plane.app`."""
    loop = asyncio.get_running_loop()
    connections = Connections(plane.settings, loop)
    server = await loop.create_server(
        lambda: ClientConnection(plane, connections),
        host,
        port,
        reuse_address=True,
        reuse_port=reuse_port or None,
        backlog=2048,  # as uvicorn: bursts of new clients are not refused
    )
    return Front(server, connections, plane)
