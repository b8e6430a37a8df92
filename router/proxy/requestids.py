"""Request ids: the router issues one per request; a client's own id is kept beside it.

The id is set once, by the router's connection layer, for every request it reads (so also for
the ones it refuses), and is always new: 128 random bits. It is what `POST /feedback` names to
attach a late label to a logged prediction, so a client must never choose it: two requests
sent with one guessable id (an order number) would otherwise share a join key, and a label
meant for one could be scored against the other's answer. As Envoy at the edge
(`preserve_external_request_id: false`), the client's `X-Request-Id` is not trusted; when it is
1 to 200 visible ASCII characters it is kept as `X-Client-Request-Id`: passed to the model
server and the router's own app, recorded in the prediction log beside the id, and echoed in
the answer. An upstream's copy of either header in its answer is dropped.
"""

from __future__ import annotations

import os
from binascii import hexlify

HEADER = b"X-Request-Id"
LOWERED = HEADER.lower()
CLIENT_HEADER = b"X-Client-Request-Id"
CLIENT_LOWERED = CLIENT_HEADER.lower()
MAX_LENGTH = 200
ID_LENGTHS = frozenset({len(HEADER), len(CLIENT_HEADER)})


class _RandomPool:
    """Random bytes fetched from the kernel 4 KiB at a time, handed out 16 at a time.

    One `getrandom` call per 256 ids instead of one per request: the same randomness, less
    of the router's CPU. Router processes are started, never forked, so no two share a pool.
    """

    SIZE = 4096

    def __init__(self) -> None:
        self._pool, self._at = b"", self.SIZE

    def take16(self) -> bytes:
        """Return the next 16 random bytes."""
        at = self._at
        if at >= self.SIZE:
            self._pool, at = os.urandom(self.SIZE), 0
        self._at = at + 16
        return self._pool[at : at + 16]


_RANDOM = _RandomPool()


def new_request_id() -> bytes:
    """Return a fresh id: 32 hex digits, random (no clock or counter to guess from)."""
    return hexlify(_RANDOM.take16())


def usable(value: bytes) -> bool:
    """Whether a client's id can be kept: 1-200 visible ASCII characters (no spaces)."""
    return 0 < len(value) <= MAX_LENGTH and all(0x21 <= byte <= 0x7E for byte in value)


def client_ids(headers: list[tuple[bytes, bytes]]) -> tuple[bytes | None, bool]:
    """Return a client's `X-Request-Id` (None if none), and whether it sent either id header.

    Only names of those two lengths are lowered (most headers are not): the hot path's pass.
    """
    given, sent = None, False
    for name, value in headers:
        if len(name) in ID_LENGTHS:
            lowered = name.lower()
            if lowered == LOWERED:
                given, sent = value, True
            elif lowered == CLIENT_LOWERED:
                sent = True
    return given, sent


def settle_request_id(
    headers: list[tuple[bytes, bytes]], given: bytes | None, sent: bool = True
) -> bytes:
    """Issue the request's id, set it in `headers`, keep a client's usable `given` id beside it.

    Every hop sees the id the client gets back, and the client's own id under
    `X-Client-Request-Id` only (a client's copy of that header is dropped). `sent`: whether the
    client sent either header (`client_ids`); if not, there is nothing to drop.
    """
    if sent:
        headers[:] = [
            (name, value)
            for name, value in headers
            if name.lower() not in (LOWERED, CLIENT_LOWERED)
        ]
    if given is not None and usable(given):
        headers.append((CLIENT_HEADER, given))
    made = new_request_id()
    headers.append((HEADER, made))
    return made
