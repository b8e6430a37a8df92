"""Hot reload: notice a changed routing file and swap the table in one assignment.

Polling (every 0.2 s by default) sees every way a file changes: written in place, renamed over,
or swapped behind a Kubernetes ConfigMap's `..data` symlink, with no platform-specific API.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from contracts.routing import RoutingConfig, RoutingFileError, content_version, parse_routing

log = logging.getLogger("router")

ReloadObserver = Callable[[bool, str], None]
"""Told (succeeded, reason) after each attempt to load a changed file."""


@dataclass
class RoutingTable:
    """The loaded routing config and its content version, replaced whole on reload.

    Requests read `table.current` once and keep that object, so a request in flight finishes
    on the table it started with.
    """

    current: RoutingConfig
    version: str
    loaded_at: float = field(default_factory=time.time)
    last_error: str | None = None

    def replace(self, config: RoutingConfig, version: str) -> None:
        """Install a new config and its version."""
        self.current, self.version, self.loaded_at = config, version, time.time()
        self.last_error = None


def _fingerprint(path: Path) -> tuple[str, int, int, int] | None:
    """Return what changes with the file: its resolved target (symlink swaps) and its stat."""
    try:
        target = os.path.realpath(path)
        status = os.stat(target)
    except OSError:
        return None
    return target, status.st_ino, status.st_mtime_ns, status.st_size


@dataclass
class RoutingFileWatcher:
    """Reload `path` into `table` whenever its content changes; keep the old table if invalid."""

    path: Path
    table: RoutingTable
    observe: ReloadObserver = lambda _ok, _reason: None
    interval: float = 0.2
    _seen: tuple[str, int, int, int] | None = None

    def check(self) -> bool:
        """Look once; reload if changed. Return whether a new config was installed."""
        fingerprint = _fingerprint(self.path)
        if fingerprint is None or fingerprint == self._seen:
            return False
        self._seen = fingerprint
        try:
            data = self.path.read_bytes()
        except OSError as error:
            self._refuse(f"{self.path}: cannot read: {error.strerror or error}")
            return False
        version = content_version(data)
        if version == self.table.version:
            if self.table.last_error is not None:  # back to the loaded content: consistent again
                self.table.last_error = None
                self.observe(True, "")
            return False
        try:
            config = parse_routing(data, str(self.path))
        except RoutingFileError as error:
            self._refuse(str(error))
            return False
        self.table.replace(config, version)
        log.info("routing file %s loaded: version %s", self.path, version)
        self.observe(True, "")
        return True

    def _refuse(self, reason: str) -> None:
        self.table.last_error = reason
        log.error(
            "routing file not reloaded, still serving version %s: %s", self.table.version, reason
        )
        self.observe(False, reason)

    async def run(self) -> None:
        """Check forever, every `interval` seconds (cancel to stop)."""
        self._seen = _fingerprint(self.path)
        while True:
            await asyncio.sleep(self.interval)
            self.check()
