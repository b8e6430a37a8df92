"""Resident memory of the controller and the model servers once `mlcanary up` serves.

Run: .venv/bin/python bench/up_memory.py
Starts `mlcanary up` on free ports in a temporary state folder (training the two demo models),
waits until it serves, prints each controller, model server and MLflow worker process's
`VmRSS`; then waits until the model servers stopped their idle MLflow workers (60 s unused by
default) and prints them again; then stops the system.
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import free_port
from tests.test_cli import RunningUp

WATCHED = ("serve-model", " controller --config", "model_server.worker.process")
WORKER_TIMEOUT_SECONDS = 300


def resident() -> list[tuple[str, int]]:
    """Each watched process's command (shortened) and resident memory in MiB."""
    found = []
    for entry in sorted(Path("/proc").iterdir(), key=lambda entry: entry.name):
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            status = (entry / "status").read_text()
        except OSError:
            continue
        rss = re.search(r"VmRSS:\s+(\d+)", status)
        if rss and any(part in command for part in WATCHED):
            name = command.split(" -m ", 1)[-1].removeprefix("mlcanary ")[:50]
            found.append((name, int(rss.group(1)) // 1024))
    return found


def show(title: str, processes: list[tuple[str, int]]) -> None:
    print(title)
    for name, mib in processes:
        print(f"{mib:>5} MiB  {name}")
    print(f"{sum(mib for _, mib in processes):>5} MiB  in all")


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        up = RunningUp(Path(folder) / "state", free_port())
        try:
            up.wait_until_up()
            show("once up serves:", resident())
            deadline = time.monotonic() + WORKER_TIMEOUT_SECONDS
            while any("model_server.worker.process" in name for name, _ in resident()):
                if time.monotonic() > deadline:
                    sys.exit(f"MLflow workers still run after {WORKER_TIMEOUT_SECONDS} s")
                time.sleep(1)
            show("once the model servers' MLflow workers stopped (idle):", resident())
        finally:
            up.stop()


if __name__ == "__main__":
    main()
