"""Resident memory of the controller and the model servers once `mlcanary up` serves.

Run: .venv/bin/python bench/up_memory.py
Starts `mlcanary up` on free ports in a temporary state folder (training the two demo models),
waits until it serves, prints each controller and model server process's `VmRSS`, and stops
the system.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import free_port
from tests.test_cli import RunningUp

WATCHED = ("serve-model", " controller --config")


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        up = RunningUp(Path(folder) / "state", free_port())
        try:
            up.wait_until_up()
            for entry in sorted(Path("/proc").iterdir(), key=lambda entry: entry.name):
                if not entry.name.isdigit():
                    continue
                try:
                    command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                    status = (entry / "status").read_text()
                except OSError:
                    continue
                found = re.search(r"VmRSS:\s+(\d+)", status)
                if found and any(part in command for part in WATCHED):
                    name = command.split(" -m mlcanary ", 1)[-1][:50]
                    print(f"{int(found.group(1)) // 1024:>5} MiB  {name}")
        finally:
            up.stop()


if __name__ == "__main__":
    main()
