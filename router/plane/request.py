"""One request as the client connection sees it: its head read and checked, then owed an answer.

The rules a head must meet before anything is relayed live here, apart from the connection's
life (parsing, pipelining, closing) in `connection.py`: the header count and head size (431),
exactly one Host on HTTP/1.1 (400), a declared body over the limit (413), and an Upgrade with a
chunked body, which cannot be read (501). Each check answers a `Refusal`, or None to go on; the
data plane's own refusals (`Plane.refusal`: method, path) come between the Host and the body's.
"""

from __future__ import annotations

from dataclasses import dataclass

from router.plane.wire import Headers

Refusal = tuple[int, str, str]
"""An answer refusing the request: status, the error body's code, its message."""


@dataclass(slots=True)
class Framing:
    """What a head's headers say about the body and the connection."""

    length: int | None = None
    """`Content-Length`, which httptools has checked is one number."""
    chunked: bool = False
    continue_expected: bool = False
    """`Expect: 100-continue`: the client waits for a go-ahead before sending the body."""
    upgrade: bool = False
    hosts: int = 0


def framing_of(headers: Headers) -> Framing:
    """Scan the headers once for everything that frames the request."""
    framing = Framing()
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"host":
            framing.hosts += 1
        elif lowered == b"content-length":
            framing.length = int(value)
        elif lowered == b"transfer-encoding":
            framing.chunked = b"chunked" in value.lower()
        elif lowered == b"expect":
            framing.continue_expected = value.lower() == b"100-continue"
        elif lowered == b"upgrade":
            framing.upgrade = True
    return framing


def head_too_large(max_head_bytes: int) -> Refusal:
    """Refuse a head over the size limit, complete or still arriving."""
    message = f"request line and headers exceed {max_head_bytes} bytes"
    return 431, "REQUEST_LIMIT_EXCEEDED", message


def head_refusal(
    url: bytes, headers: Headers, read_bound: int, max_headers: int, max_head_bytes: int
) -> Refusal | None:
    """Check a complete head's header count and size.

    `read_bound` is what was read since the read the head began in, which the head cannot
    exceed: only when that bound passes the limit is the head measured exactly (the hot path
    never sums the headers).
    """
    if len(headers) > max_headers:
        return 431, "REQUEST_LIMIT_EXCEEDED", f"more than {max_headers} headers"
    if read_bound > max_head_bytes:
        size = len(url) + sum(len(n) + len(v) + 4 for n, v in headers)
        if size > max_head_bytes:
            return head_too_large(max_head_bytes)
    return None


def host_refusal(framing: Framing, http11: bool) -> Refusal | None:
    """HTTP/1.1 needs exactly one Host (RFC 9112 section 3.2), as nginx and uvicorn check."""
    if http11 and framing.hosts != 1:
        message = f"HTTP/1.1 requests need exactly one Host header, got {framing.hosts}"
        return 400, "BAD_REQUEST", message
    return None


def body_refusal(framing: Framing, upgrading: bool, max_body_bytes: int) -> Refusal | None:
    """Check the declared body's size, and that an Upgrade's body can be read (not chunked)."""
    if framing.length is not None and framing.length > max_body_bytes:
        message = f"body of {framing.length} bytes exceeds the limit of {max_body_bytes}"
        return 413, "REQUEST_LIMIT_EXCEEDED", message
    if upgrading and framing.chunked:
        message = "Upgrade is not supported, and a chunked body with it cannot be read"
        return 501, "NOT_IMPLEMENTED", message
    return None


@dataclass(slots=True)
class Owed:
    """One answer owed to the client, in request order."""

    method: bytes
    target: bytes
    headers: Headers
    body: bytes
    keep_alive: bool
    http10: bool
    request_id: bytes
    client_id: bytes = b""
    """The client's own `X-Request-Id`, echoed as `X-Client-Request-Id` (see requestids)."""
    answer: bytes | None = None
    """Set for an answer the router makes without the plane (an error); the plane's comes later."""

    def answer_lines(self, closing: bool) -> bytes:
        """Make the header lines the router adds to this answer: ids and `Connection`."""
        lines = b"X-Request-Id: %s\r\n" % self.request_id
        if self.client_id:
            lines += b"X-Client-Request-Id: %s\r\n" % self.client_id
        if closing:
            lines += b"Connection: close\r\n"
        elif self.http10:
            lines += b"Connection: keep-alive\r\n"
        return lines
