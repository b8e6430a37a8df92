"""What the soak watches every `SAMPLE_S`: each process's memory, files, threads and sockets,
and the size of each folder the system writes.

Processes are those `up` started (and `up` itself), named by role from their command line, so
that a router started again after a fault continues its role's story under a new pid.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from bench.soaking.faults import System

SAMPLE_S = 10.0

ROLES = (
    ("mlcanary router", "router"),
    ("mlcanary controller", "controller"),
    ("mlcanary up", "up"),
    ("model_server.worker.process", "model server worker"),
    ("common.guardian", "guardian"),
    ("mlflow server", "mlflow"),
    ("mlflow.server", "mlflow worker"),
)


@dataclass(frozen=True)
class ProcessSample:
    """One process at one moment."""

    time: float
    pid: int
    role: str
    rss_mib: float
    open_files: int
    threads: int
    sockets: int


def role_of(command: str) -> str:
    """Name a process's part of the system from its command line."""
    found = re.search(r"serve-model models:/[^/ ]+/(\S+)", command)
    if found:
        return f"model server v{found.group(1)}"
    for words, role in ROLES:
        if words in command:
            return role
    return command.split(" -m ", 1)[-1][:40] or "?"


def sample_processes(system: System) -> list[ProcessSample]:
    """Sample `up` and every process it started."""
    now = time.time()
    samples = []
    for pid in [system.up_pid, *system.pids()]:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            status = Path(f"/proc/{pid}/status").read_text()
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue  # it ended while read
        rss = re.search(r"VmRSS:\s+(\d+)", status)
        threads = re.search(r"Threads:\s+(\d+)", status)
        samples.append(ProcessSample(
            now, pid, role_of(command), int(rss.group(1)) / 1024 if rss else 0.0, len(links),
            int(threads.group(1)) if threads else 0,
            sum(1 for link in links if link.startswith("socket:")),
        ))  # fmt: skip
    return samples


def folder_sizes(state: Path) -> dict[str, int]:
    """Bytes in each folder of the state the system writes to, and in the whole state."""
    sizes = {"state": _size(state)}
    for entry in sorted(state.iterdir()) if state.is_dir() else []:
        if entry.is_dir():
            sizes[entry.name] = _size(entry)
    return sizes


def _size(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total
