"""The bytes of request bodies the front holds while they arrive, bounded across connections.

Each connection may buffer a body up to `max_body_bytes` (16 MiB) until it is complete, and
4,096 connections may be open: without a shared bound, clients trickling bodies could make the
router hold gigabytes. A body that would take the total past `max_buffered_bytes` is refused
(503, counted): the clients already sending keep their place, and a request whose body has
arrived is never refused by it (its bytes stop counting once it is whole and handed on).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class BodyBudget:
    """Bytes of incomplete request bodies held, against a limit shared by all connections."""

    limit: int
    held: int = 0

    def take(self, size: int) -> bool:
        """Hold `size` more bytes if the limit allows; say whether it did."""
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give_back(self, size: int) -> None:
        """Release bytes of a body that completed, or whose connection ended."""
        self.held -= size
