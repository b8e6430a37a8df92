"""A client connection's whole life on the router's port, as uvicorn and nginx handle one.

`ClientConnection` owns one connection from accept to close: it parses requests with httptools,
checks the limits while parsing (head size and header count: 431; declared or received body over
the limit: 413; Host missing or doubled on HTTP/1.1: 400), passes one request at a time to the
data plane (pipelined ones wait, reading paused), and writes every answer, error answers
included, in request order. After a request that does not keep the connection alive, or after
an error that leaves the stream unframed, further bytes are ignored and the connection closes
after the answers owed.

Every connection is tracked by `connections.Connections` (limit, deadline sweep, drain).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from functools import partial
from typing import TYPE_CHECKING, cast

import httptools

from contracts.errors import error_body
from router.plane.connections import Connections
from router.plane.handler import Plane
from router.plane.request import (
    Owed,
    body_refusal,
    framing_of,
    head_refusal,
    head_too_large,
    host_refusal,
)
from router.plane.wire import JSON_TYPE, response_bytes, with_head_lines
from router.proxy import requestids as request_ids

if TYPE_CHECKING:
    from router.plane.upload import StreamedUpload

LINGER_S = 5.0
"""How long a closing connection keeps reading what its client still sends (nginx: 5 s)."""


class StopParsing(Exception):
    """Raised from a parser callback to stop reading this connection's stream."""


class ClientConnection(asyncio.Protocol):
    """One client connection: parse, check limits, serve one request at a time, answer in order."""

    def __init__(self, plane: Plane, connections: Connections) -> None:
        self.plane, self.connections = plane, connections
        self.settings = settings = plane.settings
        # Limits read per request, held as plain attributes (the hot path):
        self.max_head_bytes = settings.max_head_bytes
        self.max_headers = settings.max_headers
        self.max_body_bytes = settings.max_body_bytes
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.owed: deque[Owed] = deque()
        """Requests received and not yet answered; the first is at the upstream."""
        self.deadline = math.inf
        """When the connection is closed unless something happens (loop time)."""
        self.stopped = False
        """No more requests are read: the last one closes the connection, or was malformed."""
        self.draining = False
        self.paused = False
        """Reading is paused while pipelined requests wait their turn."""
        self.refused = False
        self.in_request = False
        """A request's head or body is being received."""
        self.headers_done = False
        self.http10 = False
        self.request_id = b""
        # The request being received:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.body_bytes = 0
        self.read_total = 0
        """Bytes read from the client so far."""
        self.read_before = 0
        """Bytes read before the current read."""
        self.head_from = 0
        """`read_before` when the current request began: its head is no larger than what was
        read since."""
        self.head_stream = 0
        """Bytes of reads that fell wholly inside the head: a header that never ends shows here."""
        self.upload: StreamedUpload | None = None
        self.chunked = False
        """The body being received is chunked: buffered until it proves large, then relayed."""
        self.held = 0
        """Bytes of the body being received counted in the shared `BodyBudget`."""
        self.upgrade_body_left = -1
        """Bytes of an Upgrade request's body still to come (llhttp leaves them to us)."""
        self.upgrade_method = b""
        self.upgrade_keep_alive = False

    # --- connection events -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Take the connection unless the router holds its limit of them already."""
        self.transport = cast(asyncio.Transport, transport)  # TCP (asyncio's or uvloop's)
        if not self.connections.admit(self):
            self.plane.count_limit("connections")
            self.transport.close()
            return
        self.deadline = self.connections.now + self.settings.header_timeout_s

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection; drop a body still being relayed."""
        self.connections.forget(self)
        self.stopped = True
        self._release_body()
        upload, self.upload = self.upload, None
        if upload is not None:
            self.plane.abort_upload(upload)

    def data_received(self, data: bytes) -> None:
        """Feed the parser; an Upgrade request's body is read here, past the parser."""
        if self.stopped:
            return  # after a closing request, or a malformed one: nothing more is read
        if self.upgrade_body_left >= 0:
            data = self._take_upgrade_body(data)
            if not data:
                return
        size = len(data)
        self.read_before = self.read_total
        self.read_total += size
        if self.in_request and not self.headers_done:
            self.head_stream += size
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._after_upgrade_head(data[upgrade.args[0] :])
        except httptools.HttpParserCallbackError as error:
            if not isinstance(error.__context__, StopParsing):
                raise
        except httptools.HttpParserError as error:
            self._refuse(400, "BAD_REQUEST", f"malformed HTTP request: {error}")
            return
        if self.in_request and not self.headers_done and self.head_stream > self.max_head_bytes:
            self._refuse(*head_too_large(self.max_head_bytes))

    # --- parser callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        """Start a request: its head must be complete within the header timeout."""
        if self.stopped:
            raise StopParsing
        self.in_request, self.headers_done = True, False
        self.url, self.headers, self.body = b"", [], []
        self.request_id = self.client_id = b""
        self.body_bytes, self.head_stream = 0, 0
        self.head_from = self.read_before  # the head began in the current read, or later
        if not self.owed:
            self.deadline = self.connections.now + self.settings.header_timeout_s

    def on_url(self, url: bytes) -> None:
        """Collect the target."""
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        """Collect a header (the limits are checked once the head is complete)."""
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        """Check the head; answer `Expect: 100-continue`; start relaying a large body at once."""
        self.headers_done = True
        given, sent = request_ids.client_ids(self.headers)
        if given is not None and request_ids.usable(given):
            self.client_id = given  # a refusal echoes it too
        read_bound = self.read_total - self.head_from
        refused = head_refusal(
            self.url, self.headers, read_bound, self.max_headers, self.max_head_bytes
        )
        if refused is not None:
            self._refuse(*refused)
            raise StopParsing
        self.request_id = request_ids.settle_request_id(self.headers, given, sent)
        self.http10 = self.parser.get_http_version() == "1.0"
        framing = framing_of(self.headers)
        length, chunked = framing.length, framing.chunked
        upgrading = framing.upgrade and self.parser.should_upgrade()
        refused = (
            host_refusal(framing, not self.http10)
            or self.plane.refusal(self.parser.get_method(), self.url, self.headers, length)
            or body_refusal(framing, upgrading, self.max_body_bytes)
        )
        if refused is not None:
            self._refuse(*refused)
            raise StopParsing
        if upgrading:
            self.upgrade_body_left = length or 0
            self.upgrade_method = self.parser.get_method()
            self.upgrade_keep_alive = self.parser.should_keep_alive()
            return
        if length or chunked:
            self.deadline = self.connections.now + self.settings.body_timeout_s
        if framing.continue_expected and not self.http10 and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.chunked = chunked
        if length is not None and length > self.settings.stream_above_bytes:
            self._stream(length)

    def on_body(self, body: bytes) -> None:
        """Collect a piece of the body, or pass it on when it is being relayed.

        The body's deadline is not moved: the whole body must come within `body_timeout_s`.
        """
        self.body_bytes += len(body)
        if self.body_bytes > self.max_body_bytes:
            limit = self.max_body_bytes
            self._refuse(413, "REQUEST_LIMIT_EXCEEDED", f"body exceeds the limit of {limit}")
            raise StopParsing
        if self.upload is not None:
            self.plane.feed_upload(self.upload, body)
            return
        if not self.connections.bodies.take(len(body)):
            self.plane.count_limit("buffered")
            message = "the router holds its limit of request bodies being received; retry soon"
            self._refuse(503, "TEMPORARILY_UNAVAILABLE", message)
            raise StopParsing
        self.held += len(body)
        self.body.append(body)
        if self.chunked and self.body_bytes > self.settings.stream_above_bytes:
            self._stream(None)  # large after all: relayed from now on, as it arrives

    def _stream(self, length: int | None) -> None:
        """Relay the body to the app as it arrives (what came so far first), if nothing is ahead.

        Only bodies known to be large are: a small one, chunked or not, is buffered whole
        first, so that a client trickling it holds no connection to the app meanwhile.
        """
        if self.owed or self.transport is None:
            return  # pipelined behind another request: buffered until its turn
        method = self.parser.get_method()
        upload = self.plane.start_upload(method, self.url, self.headers, length, self.transport)
        for piece in self.body:
            self.plane.feed_upload(upload, piece)
        self.upload, self.body = upload, []
        self._release_body()

    def _release_body(self) -> None:
        """Give the body's bytes back to the shared budget (it is whole, relayed, or dropped)."""
        if self.held:
            self.connections.bodies.give_back(self.held)
            self.held = 0

    def on_message_complete(self) -> None:
        """Queue the request; serve it now if nothing is ahead of it."""
        if self.upgrade_body_left >= 0:
            return  # served once its body is read (see `_take_upgrade_body`)
        parser = self.parser
        self._received(parser.get_method(), parser.should_keep_alive(), self.http10)

    # --- requests and answers ----------------------------------------------------------------

    def _received(self, method: bytes, keep_alive: bool, http10: bool) -> None:
        self.in_request = False
        self._release_body()
        if not keep_alive:
            self.stopped = True
        first = not self.owed
        owed = Owed(
            method, self.url, self.headers, b"".join(self.body), keep_alive, http10,
            self.request_id, self.client_id,
        )  # fmt: skip
        self.owed.append(owed)
        if first:
            self.deadline = math.inf  # the upstream's timeout governs the wait now
            self._serve(owed)
        elif self.transport is not None:
            self.paused = True  # pipelined: read more once the queue drains
            self.transport.pause_reading()

    def _serve(self, owed: Owed) -> None:
        deliver = partial(self._answered, owed)
        upload, self.upload = self.upload, None
        if owed.answer is not None:
            deliver(owed.answer)
        elif upload is not None:
            self.plane.finish_upload(upload, deliver)
        else:
            self.plane.handle(
                owed.method, owed.target, owed.headers, owed.body, deliver, owed.request_id
            )

    def _answered(self, owed: Owed, data: bytes) -> None:
        """Write the answer of the first request owed; serve the next one, or idle, or close."""
        owed.answer = data
        self.owed.popleft()  # one request is served at a time: `owed` is the first
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        last = (self.stopped or self.draining) and not self.owed
        closing = last or not owed.keep_alive
        transport.write(with_head_lines(data, owed.answer_lines(closing)))
        if closing:
            self._linger(transport)
            return
        if self.owed:
            self._serve(self.owed[0])
            return
        now = self.connections.now
        if self.in_request:
            self.deadline = now + self.settings.header_timeout_s
        else:
            self.deadline = now + self.settings.keepalive_timeout_s
        if self.paused:
            self.paused = False
            transport.resume_reading()

    def _linger(self, transport: asyncio.Transport) -> None:
        """Close after the last answer as nginx does (lingering close).

        Send FIN, then read and drop what the client still sends until it closes or `LINGER_S`
        passes: closing with unread bytes would send a reset, and the client could lose the
        answer it was owed.
        """
        self.stopped = True
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        transport.resume_reading()
        self.deadline = self.connections.now + LINGER_S

    def _refuse(self, status: int, error_code: str, message: str) -> None:
        """Answer an unusable request in its turn, then close: the stream is not framed now."""
        if self.refused:
            return
        self.stopped = self.refused = True
        self.in_request = False
        self._release_body()
        upload, self.upload = self.upload, None
        if upload is not None:
            self.plane.abort_upload(upload)
        answer = response_bytes(status, JSON_TYPE, error_body(error_code, message))
        first = not self.owed
        request_id = self.request_id or request_ids.new_request_id()
        owed = Owed(b"", b"", [], b"", False, False, request_id, self.client_id, answer=answer)
        self.owed.append(owed)
        if first:
            self._answered(owed, answer)

    # --- Upgrade: served as a plain request ---------------------------------------------------

    def _after_upgrade_head(self, rest: bytes) -> None:
        self.parser = httptools.HttpRequestParser(self)  # llhttp stops at an upgrade: start anew
        rest = self._take_upgrade_body(rest)
        if rest:
            self.data_received(rest)

    def _take_upgrade_body(self, data: bytes) -> bytes:
        """Read the Upgrade request's body by its length; return the bytes after it."""
        piece, rest = data[: self.upgrade_body_left], data[self.upgrade_body_left :]
        if piece:
            self.body.append(piece)
            self.upgrade_body_left -= len(piece)
        if self.upgrade_body_left == 0:
            self.upgrade_body_left = -1
            self._received(self.upgrade_method, self.upgrade_keep_alive, http10=False)
        return rest

    # --- limits and lifecycle ----------------------------------------------------------------

    def idle(self) -> bool:
        """No answer is owed and no request is half received."""
        return not self.owed and not self.in_request

    def expire(self, now: float) -> None:
        """Close the connection if it is past its deadline with no answer owed."""
        if now >= self.deadline and not self.owed and self.transport is not None:
            if self.in_request:
                self.plane.count_limit("body_timeout" if self.headers_done else "header_timeout")
            self.transport.close()

    def drain(self) -> None:
        """Close now if idle; otherwise after the answers owed (no further request is read)."""
        self.draining = True
        receiving_body = self.in_request and self.headers_done
        if not self.owed and not receiving_body and self.transport is not None:
            self.transport.close()
