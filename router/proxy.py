"""One upstream exchange: send the request on, and classify what came back."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
        "trailers", "transfer-encoding", "upgrade", "host", "content-length",
    }
)  # fmt: skip
RETRYABLE_STATUSES = frozenset({502, 503})


@dataclass(frozen=True)
class Answer:
    """What the upstream answered."""

    status: int
    body: bytes
    headers: CIMultiDict[str]


@dataclass(frozen=True)
class Failure:
    """Why no answer came: connect, reset or timeout."""

    reason: str
    detail: str


def forward_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """Copy end-to-end request headers (hop-by-hop ones dropped)."""
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP)


async def exchange(
    session: aiohttp.ClientSession,
    url: str,
    path: str,
    body: bytes,
    headers: CIMultiDict[str],
) -> Answer | Failure:
    """POST `body` to `url + path`; return the answer, or why there was none."""
    try:
        async with session.post(url + path, data=body, headers=headers) as reply:
            data = await reply.read()
            kept = CIMultiDict(
                (k, v) for k, v in reply.headers.items() if k.lower() not in HOP_BY_HOP
            )
            return Answer(reply.status, data, kept)
    except aiohttp.ClientConnectorError as error:
        return Failure("connect", str(error))
    except TimeoutError as error:
        return Failure("timeout", type(error).__name__)
    except (
        aiohttp.ServerDisconnectedError,
        aiohttp.ClientOSError,
        aiohttp.ClientPayloadError,
    ) as error:
        return Failure("reset", str(error) or type(error).__name__)
