"""Request ids: every answer carries `X-Request-Id`, the client's if usable, else a new one.

The id is set once, by the router's connection layer, for every request it reads (so also for
the ones it refuses): a client's id is kept when it is 1 to 200 visible ASCII characters and
replaced otherwise; it is passed to the model server and to the router's own app (which puts
it in `/predict`'s body and in the prediction log), and an upstream's copy in its answer is
dropped. It is what `POST /feedback` names to attach a late label to a logged prediction.
"""

from __future__ import annotations

import os

HEADER = b"X-Request-Id"
LOWERED = HEADER.lower()
MAX_LENGTH = 200


def new_request_id() -> bytes:
    """Return a fresh id: 32 hex digits, random (no clock or counter to guess from)."""
    return os.urandom(16).hex().encode()


def usable(value: bytes) -> bool:
    """Whether a client's id can be kept: 1-200 visible ASCII characters (no spaces)."""
    return 0 < len(value) <= MAX_LENGTH and all(0x21 <= byte <= 0x7E for byte in value)


def settle_request_id(headers: list[tuple[bytes, bytes]], given: bytes | None) -> bytes:
    """Return the request's id: the client's `given` one if usable, else a new one.

    A new id replaces the client's in `headers`, so every hop sees the id the client gets.
    """
    if given is not None and usable(given):
        return given
    if given is not None:
        headers[:] = [(name, value) for name, value in headers if name.lower() != LOWERED]
    made = new_request_id()
    headers.append((HEADER, made))
    return made
