"""CPU the `mlcanary` command spends starting, per command: what an emergency rollback waits for.

Runs each command (its `--help`, and a real `rollback` against a port where nothing listens, which
fails at once after starting) `--repeat` times and prints the median CPU seconds (user + system,
from the kernel's accounting of the child) and where an import-time profile says it goes.

    .venv/bin/python bench/cli_start.py --repeat 15
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

COMMANDS = [
    ["--help"],
    ["status", "--help"],
    ["rollback", "--help"],
    ["router", "--help"],
    ["controller", "--help"],
    ["up", "--help"],
    ["rollout", "start", "--help"],
    ["train", "--help"],
    ["rollback", "--reason", "bench", "--controller", "http://127.0.0.1:9"],
]


def cpu_seconds(argv: list[str]) -> float:
    """Run `argv` to completion; return the CPU seconds it used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, capture_output=True, check=False, env={**os.environ, "COLUMNS": "80"})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def heaviest_imports(argv: list[str], count: int = 8) -> list[tuple[int, str]]:
    """Return the `count` imports with the largest cumulative time (microseconds)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mlcanary", *argv],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    found = []
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line.removeprefix("import time:").split("|")
            if cumulative.strip().isdigit():
                found.append((int(cumulative), name.strip()))
    return sorted(found, reverse=True)[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    command = shutil.which("mlcanary", path=str(Path(sys.executable).parent))
    assert command, "run with the project's virtual environment's python"
    print(f"{'command':<60} median CPU s   max")
    for argv in COMMANDS:
        times = [cpu_seconds([command, *argv]) for _ in range(args.repeat)]
        print(f"{' '.join(argv):<60} {statistics.median(times):>12.3f} {max(times):>5.3f}")
    print("\nheaviest imports of `rollback` (cumulative, ms):")
    for micros, name in heaviest_imports(COMMANDS[-1]):
        print(f"  {micros / 1000:8.1f}  {name}")


if __name__ == "__main__":
    main()
