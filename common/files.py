"""State files written whole or not at all, and logs appended to: never readable by others.

A reader, or a restart after a crash, never sees a state file half written. Logs (predictions
with their request bodies, labels, audit) are personal data: created 0640 (owner and group, so
that a controller in the router's group can read them), in folders 0750, whatever the umask.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` through a temporary file in the same folder, fsynced, then renamed.

    The folder is fsynced after the rename too, so a power cut leaves the old file or the new
    one. `mode` is set before any byte is written (a token file is never readable by others).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


PRIVATE_FILE = 0o640
PRIVATE_FOLDER = 0o750


def append_fsynced(path: Path, data: bytes, mode: int = PRIVATE_FILE) -> None:
    """Append `data` to `path` and fsync it; a new file gets `mode`, new folders 0750."""
    _private_folders(path.parent)
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)
    with os.fdopen(descriptor, "ab") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _private_folders(folder: Path) -> None:
    """Create `folder` and missing parents, each new one 0750."""
    if folder.is_dir():
        return
    _private_folders(folder.parent)
    try:
        folder.mkdir(mode=PRIVATE_FOLDER)
    except FileExistsError:
        return
    os.chmod(folder, PRIVATE_FOLDER)  # mkdir's mode is cut by the umask
