"""The controller's memory for labels after 1,000,000 logged answers with 2 KiB request bodies.

Writes a prediction log of `--answers` records (one router's hourly files, 2 KiB inputs and a
one-number answer each, about 2.1 GB at the default) to a temporary folder, then in a fresh
process per case builds the controller's `LabelBook` over it and reports the process's
resident memory (VmRSS) once the log is read, against a process that only imported the same
modules (the baseline):

- `default`: the controller as shipped (`--max-logged-answers` 500,000);
- `unbounded`: a limit above the count, every answer held;
- `reference`: the records held as the log's reader parses them (`Prediction`, with their
  inputs): what the controller held before this bound, for the first `--reference` answers.

    .venv/bin/python bench/controller_memory.py --answers 1000000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASE = """
import json, sys, time
from pathlib import Path
from prometheus_client import CollectorRegistry
from common.predictionlog import read_predictions
from controller.feedback import LabelBook

def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

log, case, limit, reference = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
baseline = rss()
started = time.perf_counter()
if case == "reference":
    held = {}
    for number, record in enumerate(read_predictions(log)):
        if number >= reference:
            break
        held[record.request_id] = record
    count = len(held)
elif case != "baseline":
    book = LabelBook(log, Path(log).parent / "labels.jsonl", CollectorRegistry(), max_answers=limit)
    count = book.memory()["answers_held"]
else:
    count = 0
print(json.dumps({"case": case, "held": count, "baseline_rss": baseline, "rss": rss(),
                  "seconds": time.perf_counter() - started}))
"""


def write_log(folder: Path, answers: int) -> int:
    """Write `answers` records, 2 KiB of inputs each, in hourly files; return the bytes."""
    inputs = json.dumps({"dataframe_records": [{"text": "x" * 2000}]})
    at = time.time()
    written = 0
    per_hour = 200_000
    for start in range(0, answers, per_hour):
        hour = at - 3600 * (answers - start) // per_hour
        path = (
            folder
            / time.strftime("%Y-%m-%d", time.gmtime(hour))
            / (f"{time.gmtime(hour).tm_hour:02d}-bench-router.jsonl")
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as handle:
            for number in range(start, min(start + per_hour, answers)):
                answer = f'{{"predictions":[{number % 97}]}}'
                line = (
                    f'{{"request_id":"{number:032x}","time":{hour:.3f},"variant":"stable",'
                    f'"version":"1","inputs":{inputs},"answer":{answer}}}\n'
                ).encode()
                handle.write(line)
                written += len(line)
    return written


def run_case(log: Path, case: str, limit: int, reference: int) -> dict[str, float]:
    """Measure one case in a fresh process."""
    done = subprocess.run(
        [sys.executable, "-c", CASE, str(log), case, str(limit), str(reference)],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    measured: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return measured


def main() -> None:
    """Write the log, measure each case, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=1_000_000)
    parser.add_argument("--reference", type=int, default=200_000)
    arguments = parser.parse_args()
    from controller.answers import DEFAULT_LIMIT

    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "predictions"
        size = write_log(log, arguments.answers)
        print(f"log: {arguments.answers:,} answers, {size / 1e9:.2f} GB")
        baseline = run_case(log, "baseline", 0, 0)["rss"]
        print(f"{'case':>10} {'held':>10} {'RSS MB':>8} {'over baseline MB':>17}"
              f" {'bytes/answer':>13} {'read s':>7}")  # fmt: skip
        for case, limit in (("default", DEFAULT_LIMIT), ("unbounded", arguments.answers + 1),
                            ("reference", 0)):  # fmt: skip
            measured = run_case(log, case, limit, arguments.reference)
            extra = measured["rss"] - baseline
            held = measured["held"] or 1
            print(f"{case:>10} {int(measured['held']):>10,} {measured['rss'] / 1e6:>8.0f}"
                  f" {extra / 1e6:>17.0f} {extra / held:>13.0f}"
                  f" {measured['seconds']:>7.1f}")  # fmt: skip
        print(f"baseline RSS (imports only): {baseline / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
