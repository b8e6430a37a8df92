"""Time `mlcanary train` end to end for each model kind and report its held-out metrics.

Run: .venv/bin/python bench/train_times.py [--repeat 3]
Each kind is trained `repeat` times into a fresh embedded registry (the first run of all also
creates the sqlite database); the table shows the median wall time of the whole command.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

KINDS = ("linear", "random_forest", "gradient_boosting")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as state:
        environment = dict(os.environ, MLCANARY_HOME=state)
        environment.pop("MLFLOW_TRACKING_URI", None)
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "mlcanary", "train", "--model", "linear", "--json"],
            env=environment, check=True, capture_output=True,
        )  # fmt: skip
        print(f"first train into a new registry: {time.perf_counter() - started:.1f} s")
        print(f"{'kind':<18} {'wall s (median)':>16} {'in-process s':>13} {'r2':>7} {'rmse':>7}")
        for kind in KINDS:
            walls, result = [], {}
            for _ in range(arguments.repeat):
                started = time.perf_counter()
                done = subprocess.run(
                    [sys.executable, "-m", "mlcanary", "train", "--model", kind, "--json"],
                    env=environment, check=True, capture_output=True, text=True,
                )  # fmt: skip
                walls.append(time.perf_counter() - started)
                result = json.loads(done.stdout)
            print(
                f"{kind:<18} {statistics.median(walls):>16.2f} {result['seconds']:>13.2f}"
                f" {result['metrics']['r2']:>7.3f} {result['metrics']['rmse']:>7.3f}"
            )


if __name__ == "__main__":
    main()
