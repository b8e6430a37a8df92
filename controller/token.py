"""The admin token: written by `up` (mode 0600), read by the CLI, compared in constant time."""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path

from common.files import write_atomically

TOKEN_FILE = "admin-token"  # noqa: S105 (a file name, not a secret)


def write_fresh_token(path: Path) -> str:
    """Write a new random token to `path`, readable by its owner only; return it."""
    token = secrets.token_urlsafe(32)
    write_atomically(path, (token + "\n").encode(), mode=0o600)
    return token


def read_token(path: Path) -> str:
    """Return the token stored at `path` (raises OSError if there is none)."""
    return path.read_text().strip()


def token_matches(given: str, expected: str) -> bool:
    """Compare two tokens in time independent of where they differ."""
    return hmac.compare_digest(given.encode(), expected.encode())
