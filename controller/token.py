"""The admin token: written by `up` (mode 0600), read by the CLI, compared in constant time."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

TOKEN_FILE = "admin-token"  # noqa: S105 (a file name, not a secret)


def write_fresh_token(path: Path) -> str:
    """Write a new random token to `path`, readable by its owner only; return it."""
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(token + "\n")
    return token


def read_token(path: Path) -> str:
    """Return the token stored at `path` (raises OSError if there is none)."""
    return path.read_text().strip()


def token_matches(given: str, expected: str) -> bool:
    """Compare two tokens in time independent of where they differ."""
    return hmac.compare_digest(given.encode(), expected.encode())
