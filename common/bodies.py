"""Reading a request body with a bound that holds before a byte is parsed.

aiohttp's `client_max_size` is one limit for a whole app; paths that take less (labels) refuse
a body by its declared length before reading it, and a chunked one as soon as it passes the
bound, so that nobody makes a server buffer or parse more than the path allows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web


class BodyTooLarge(ValueError):
    """A request body over its path's bound (answered 413)."""


async def read_bounded(request: web.Request, limit: int) -> bytes:
    """Return the body, or raise BodyTooLarge naming the bound once it is passed."""
    length = request.content_length
    if length is not None and length > limit:
        raise BodyTooLarge(f"a body of {length} bytes exceeds this path's limit of {limit}")
    pieces, size = [], 0
    async for piece in request.content.iter_any():
        size += len(piece)
        if size > limit:
            raise BodyTooLarge(f"the body exceeds this path's limit of {limit} bytes")
        pieces.append(piece)
    return b"".join(pieces)
