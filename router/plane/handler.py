"""What a client connection hands its requests to, seen from the connection.

A protocol in a module of its own: the data plane (`dataplane.DataPlane`) creates connections
and implements this; the connection (`connection.ClientConnection`) calls it, and imports only
this, so neither module imports the other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from router.plane.upload import StreamedUpload
    from router.settings import RouterSettings

Deliver = Callable[[bytes], None]
"""Called once with the bytes of a request's whole answer."""
Refusal = tuple[int, str, str]
"""An answer made without reading the body: status, MLflow error code, message."""


class Plane(Protocol):
    """What a connection hands its requests to: `dataplane.DataPlane`."""

    settings: RouterSettings

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

    def refusal(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], length: int | None
    ) -> Refusal | None:
        """Refuse a request by its head alone (a path's own bounds), before its body is read."""

    def count_limit(self, limit: str) -> None:
        """Count a client bound hit (`contracts.metrics.CLIENT_LIMITS`)."""

    def start_upload(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        length: int | None,
        client: asyncio.Transport,
    ) -> StreamedUpload:
        """Begin relaying a request whose body is still arriving."""

    def feed_upload(self, upload: StreamedUpload, piece: bytes) -> None:
        """Pass on a piece of an upload's body."""

    def finish_upload(self, upload: StreamedUpload, deliver: Deliver) -> None:
        """Deliver the answer to an upload once its body is complete."""

    def abort_upload(self, upload: StreamedUpload) -> None:
        """Drop an upload."""
