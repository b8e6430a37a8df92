"""One upstream exchange over aiohttp's client (the aiohttp plane): send, classify the outcome.

Predictions are idempotent, so an exchange whose connection was closed before any byte of the
answer came is sent once more: that is the keep-alive race of an upstream closing an idle
connection as the request went out (nginx retries it too), outside the retry budget.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from router.proxy.policy import Failure, end_to_end


@dataclass(frozen=True)
class Answer:
    """What the upstream answered."""

    status: int
    body: bytes
    headers: CIMultiDict[str]


def decoded(headers: Iterable[tuple[bytes, bytes]]) -> CIMultiDict[str]:
    """Headers as aiohttp takes them (HTTP headers are Latin-1)."""
    return CIMultiDict((name.decode("latin-1"), value.decode("latin-1")) for name, value in headers)


def forward_headers(request: web.Request) -> CIMultiDict[str]:
    """Return the request's headers to pass on to an upstream (see `policy.end_to_end`)."""
    return decoded(end_to_end(request.raw_headers))


FAILURES = (
    aiohttp.ClientConnectorError,
    TimeoutError,
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientOSError,
    aiohttp.ClientPayloadError,
)
"""What aiohttp's client raises when an upstream does not answer (see `failure_of`)."""


def failure_of(error: BaseException) -> Failure:
    """Classify one of `FAILURES`: connect, timeout or reset."""
    if isinstance(error, aiohttp.ClientConnectorError):
        return Failure("connect", str(error))
    if isinstance(error, TimeoutError):
        return Failure("timeout", type(error).__name__)
    return Failure("reset", str(error) or type(error).__name__)


async def exchange(
    session: aiohttp.ClientSession,
    url: str,
    path: str,
    body: bytes,
    headers: CIMultiDict[str],
) -> Answer | Failure:
    """POST `body` to `url + path`; return the answer, or why there was none."""
    for attempt in (1, 2):
        try:
            async with session.post(url + path, data=body, headers=headers) as reply:
                data = await reply.read()
                return Answer(reply.status, data, decoded(end_to_end(reply.raw_headers)))
        except FAILURES as error:
            if attempt == 1 and isinstance(error, aiohttp.ServerDisconnectedError):
                continue  # closed before any answer: once more, on another connection
            return failure_of(error)
    raise AssertionError("unreachable")  # pragma: no cover
