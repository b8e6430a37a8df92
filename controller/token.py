"""The controller's tokens: written at first start (mode 0600), compared in constant time.

The CLI reads them from the state folder. Two scopes: the admin token changes the split
(deploy, weight, promote, rollback, rollouts) and reads the status; the labels token posts
labels and nothing else, so that a labelling pipeline holds no credential that could move
traffic.
"""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path

from common.files import write_atomically

TOKEN_FILE = "admin-token"  # noqa: S105 (a file name, not a secret)
LABELS_TOKEN_FILE = "labels-token"  # noqa: S105 (a file name, not a secret)


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


def stored_token(given: str | None, path: Path) -> str:
    """Return the token to use: `given`, else the one stored at `path`, else a fresh one there.

    `given` comes from the environment (a Kubernetes Secret, say).
    """
    if given:
        return given
    try:
        return read_token(path)
    except OSError:
        return write_fresh_token(path)
