"""HTTP/1.1 messages as bytes, for the raw data plane (RFC 9112 framing, end-to-end headers)."""

from __future__ import annotations

from http import HTTPStatus

from router.proxy.policy import (
    ANSWER_DROPPED,
    APP_ANSWER_DROPPED,
    APP_DROPPED,
    DROPPED,
    end_to_end,
)

STATUS_LINES = {int(s): b"HTTP/1.1 %d %s\r\n" % (s, s.phrase.encode()) for s in HTTPStatus}
"""Every standard status line, with its reason phrase (an upstream's status is passed on)."""
JSON_TYPE = [(b"Content-Type", b"application/json")]
Headers = list[tuple[bytes, bytes]]


def header_lines(lines: list[bytes], headers: Headers, dropped: frozenset[bytes] = DROPPED) -> None:
    """Append a `Name: value` line for each header to pass on (see `policy.end_to_end`)."""
    for name, value in end_to_end(headers, dropped):
        lines += (name, b": ", value, b"\r\n")  # cheaper than formatting each line


def request_bytes(
    method: bytes, target: bytes, headers: Headers, body: bytes, *, to_app: bool = False
) -> bytes:
    """Serialize a whole request for an upstream (`to_app`: for the router's own app)."""
    lines = [
        b"%s %s HTTP/1.1\r\nHost: upstream\r\nContent-Length: %d\r\n" % (method, target, len(body))
    ]
    header_lines(lines, headers, APP_DROPPED if to_app else DROPPED)
    lines.append(b"\r\n")
    lines.append(body)
    return b"".join(lines)


def upload_head(method: bytes, target: bytes, headers: Headers, length: int | None) -> bytes:
    """Serialize a request head for the router's own app; its body follows.

    Framed by its length, or chunked if unknown.
    """
    framing = (
        b"Content-Length: %d" % length if length is not None else b"Transfer-Encoding: chunked"
    )
    lines = [b"%s %s HTTP/1.1\r\nHost: upstream\r\n%s\r\n" % (method, target, framing)]
    header_lines(lines, headers, APP_DROPPED)
    lines.append(b"\r\n")
    return b"".join(lines)


def response_bytes(
    status: int,
    headers: Headers,
    body: bytes,
    extra: bytes = b"",
    *,
    head_only: bool = False,
    from_router: bool = False,
) -> bytes:
    """Serialize an answer for the client: end-to-end headers, `extra` header lines, length.

    `head_only` answers a HEAD: the same head, with the length of the body it leaves out.
    `from_router`: the answer is the router's own app's, whose `X-Model-*` headers are kept.
    """
    lines = [STATUS_LINES.get(status) or b"HTTP/1.1 %d Status\r\n" % status]
    header_lines(lines, headers, APP_ANSWER_DROPPED if from_router else ANSWER_DROPPED)
    lines.append(extra)
    lines.append(b"Content-Length: %d\r\n\r\n" % len(body))
    if not head_only:
        lines.append(body)
    return b"".join(lines)


def with_head_lines(answer: bytes, lines: bytes) -> bytes:
    """Insert header `lines` after the status line of a serialized answer."""
    end = answer.index(b"\r\n") + 2
    return b"%s%s%s" % (answer[:end], lines, answer[end:])
