"""How long `mlcanary up` takes until the router answers a prediction: empty state, then reused.

Run: .venv/bin/python bench/up_time.py  (uses free ports and a temporary state folder)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import command_environment, free_port

ROW = {"hours_studied": 6.5, "sleep_hours": 7.0, "attendance_percent": 90.0, "previous_scores": 85}


def seconds_until_serving(state: Path) -> float:
    """Start `up`, time the first 200 from the router's /invocations, stop it."""
    mlflow, router, controller = free_port(), free_port(), free_port()
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "mlcanary", "up", "--mlflow-port", str(mlflow),
         "--port", str(router), "--controller-port", str(controller)],
        env=command_environment(state), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    body = json.dumps({"dataframe_records": [ROW]}).encode()
    try:
        while True:
            if process.poll() is not None:
                raise SystemExit(f"up exited with {process.returncode}")
            request = urllib.request.Request(
                f"http://127.0.0.1:{router}/invocations", data=body,
                headers={"Content-Type": "application/json"},
            )  # fmt: skip
            try:
                with urllib.request.urlopen(request, timeout=2) as answer:  # noqa: S310
                    if answer.status == 200:
                        return time.monotonic() - started
            except OSError:
                time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        state = Path(folder) / "state"
        first = seconds_until_serving(state)
        print(f"empty state (trains two models): serving after {first:.1f} s", flush=True)
        second = seconds_until_serving(state)
        print(f"reused state: serving after {second:.1f} s")


if __name__ == "__main__":
    main()
