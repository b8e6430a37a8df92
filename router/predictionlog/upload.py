"""The prediction log on object storage: write locally, upload in immutable parts.

Object stores (any fsspec filesystem given as a URL) cannot append, and a write per record or
per half-second flush would make thousands of objects an hour. So the router's log writer
appends to a local spool folder exactly as to a local log (same files, fsync, guarantees), and
every `upload_s` this uploader sends what each spool file gained since its last upload as one
part, named after the byte offset it starts at (`common.predictionlog.part_name`); the offset
uploaded so far is kept beside the file. An upload that fails is tried again next time, from
the same offset: nothing is lost while the disk holds, and a part written twice is the same
object, never a duplicate. A spool file is deleted once its hour is over and every byte of it
is uploaded.

Each router process spools under its own instance folder, holding a lock on it while it lives
(flock: released by the kernel however the process ends). A process starting finds the folders
of processes that died (their lock is free) and uploads and removes them: the records a
SIGKILLed router had written reach the store with the next router on the same spool.

An upload round never ends the loop, whatever fails in it: s3fs passes botocore's own errors
(`NoCredentialsError`, `EndpointConnectionError`) through, not `OSError`. A failed round is
counted, its error kept (redacted) for `/health`, and the next round waits longer
(`retry_wait`), while the backlog (spooled bytes not yet uploaded) is shown.
"""

from __future__ import annotations

import calendar
import fcntl
import logging
import os
import shutil
import time
from pathlib import Path
from typing import IO

from common.files import write_atomically
from common.predictionlog import log_filesystem, part_name
from common.redaction import redact

log = logging.getLogger("router")
LOCK_NAME = ".lock"
HOUR_GRACE_S = 60.0
"""A spool file's hour is over this long after it ends: records queued just before the hour
turned are written into it up to a flush later."""
MAX_RETRY_WAIT_S = 300.0


def retry_wait(every_s: float, failures: int) -> float:
    """Return the seconds until the next round after `failures` failed rounds in a row.

    `every_s`, doubled each failure, at most 5 minutes (or `every_s`, if that is longer).
    """
    return min(every_s * 2.0 ** min(failures, 32), max(every_s, MAX_RETRY_WAIT_S))


class SpoolUploader:
    """Uploads one router process's spool (and any dead process's) to `destination`."""

    def __init__(self, spool: Path, instance: str, destination: str) -> None:
        self.spool, self.destination = spool, destination
        self.filesystem, self.root = log_filesystem(destination)
        self.folder = spool / instance
        """Where this process's log writer appends (its files, as a local log's)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock: IO[bytes] | None = _locked(self.folder / LOCK_NAME)
        assert self._lock is not None  # noqa: S101 (a new instance's folder is nobody's)
        self.last_error = ""
        """Why the last round failed, redacted ("" once a round succeeds)."""
        self.failures = 0
        """Rounds failed in a row."""
        self.backlog = 0
        """`backlog_bytes()` as of the last round (read by /health without touching disk)."""

    def upload(self, last: bool = False) -> bool:
        """Upload what every spool file gained (this process's and dead ones'); blocking.

        `last`: this process writes no more (it is stopping), so its files go once uploaded.
        Return whether the round succeeded; it never raises.
        """
        try:
            return self._round(last)
        finally:
            self.backlog = self.backlog_bytes()

    def _round(self, last: bool) -> bool:
        try:
            for folder in sorted(path for path in self.spool.iterdir() if path.is_dir()):
                if folder == self.folder:
                    self._upload_folder(folder, own=not last)
                    continue
                lock = _locked(folder / LOCK_NAME)
                if lock is None:
                    continue  # a live router's: it uploads its own
                try:
                    self._upload_folder(folder, own=False)
                    shutil.rmtree(folder)
                    log.info("prediction log: uploaded what %s had left", folder.name)
                finally:
                    lock.close()
        except Exception as error:  # noqa: BLE001 (any failure: the loop goes on, see above)
            said = redact(f"{type(error).__name__}: {error}")
            if said != self.last_error:  # once, not every round
                log.warning("prediction log: upload to %s failed, will retry: %s",
                            redact(self.destination), said)  # fmt: skip
            self.last_error = said
            self.failures += 1
            return False
        if self.last_error:
            log.warning("prediction log: uploading to %s again", redact(self.destination))
        self.last_error, self.failures = "", 0
        return True

    def backlog_bytes(self) -> int:
        """Bytes spooled and not yet uploaded, in every spool folder (a dead router's too)."""
        total = 0
        for path in self.spool.glob("*/*/*.jsonl"):
            done = path.with_suffix(".uploaded")
            try:
                uploaded = int(done.read_text()) if done.exists() else 0
                total += max(path.stat().st_size - uploaded, 0)
            except (OSError, ValueError):
                continue  # removed meanwhile, or an offset being replaced
        return total

    def close(self) -> None:
        """Upload what is left and release the spool.

        The folder is removed when all of it went up, else left for the next router on this
        spool (the lock is free once closed).
        """
        if self._lock is None:
            return
        self.upload(last=True)
        if not any(self.folder.glob("*/*.jsonl")):
            shutil.rmtree(self.folder, ignore_errors=True)
        self._lock.close()
        self._lock = None

    def _upload_folder(self, folder: Path, own: bool) -> None:
        for path in sorted(folder.glob("*/*.jsonl")):
            done = path.with_suffix(".uploaded")
            offset = int(done.read_text()) if done.exists() else 0
            with path.open("rb") as handle:
                handle.seek(offset)
                data = handle.read()
            whole = data[: data.rfind(b"\n") + 1]  # a torn last line waits (or is dropped)
            if whole:
                part = f"{self.root}/{part_name(path, offset)}"
                self.filesystem.makedirs(part.rsplit("/", 1)[0], exist_ok=True)  # a folder's
                self.filesystem.pipe_file(part, whole)
                offset += len(whole)
                write_atomically(done, str(offset).encode())
            if not own or _hour_over(path):
                path.unlink()
                done.unlink(missing_ok=True)
                if not any(path.parent.iterdir()):
                    path.parent.rmdir()


def _hour_over(path: Path) -> bool:
    """Whether no record can be written to a spool file any more (its hour plus a grace)."""
    stamp = time.strptime(f"{path.parent.name} {path.stem[:2]}", "%Y-%m-%d %H")
    hour_ended = calendar.timegm(stamp) + 3600  # the names are UTC
    return time.time() > hour_ended + HOUR_GRACE_S


def _locked(path: Path) -> IO[bytes] | None:
    """Return `path` opened and exclusively locked, or None if another process holds it."""
    handle = path.open("ab")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    os.set_inheritable(handle.fileno(), False)
    return handle
