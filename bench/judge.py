"""The rollout judge's error rates: many rollouts per scenario over synthetic windows.

Run: .venv/bin/python bench/judge.py [--rollouts 1000] [--rps 20] [--interval 60]
         [--steps 5,10,25,50,100] [--min-requests 50] [--scenario SUBSTRING]

Each rollout is judged by the real gates (controller/rollout/gates.py) and stepped by the real
rules (controller/rollout/steps.py), over windows drawn as controller/rollout/simulate.py
says. Prints, per scenario, the share rolled back (for an identical twin: false rollbacks), the
share rolled back by a failed gate (not for want of traffic), the share
rolled back before 50% weight, and the median canary requests and windows to rollback.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller.rollout.judgement import GateLimits
from controller.rollout.simulate import Traffic, scenarios, simulate, summarize


def main() -> None:
    """Simulate every scenario and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=1000)
    parser.add_argument("--rps", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=60.0)
    parser.add_argument("--steps", default="5,10,25,50,100")
    parser.add_argument("--min-requests", type=int, default=GateLimits.min_requests)
    parser.add_argument("--scenario", default="", help="only scenarios whose name has this")
    parser.add_argument("--seed", type=int, default=1)
    options = parser.parse_args()
    traffic = Traffic(
        requests_per_s=options.rps,
        steps=tuple(float(step) for step in options.steps.split(",")),
        interval_s=options.interval,
        limits=replace(GateLimits(), min_requests=options.min_requests),
    )
    print(f"{options.rollouts} rollouts per scenario at {options.rps:g} requests/s, steps"
          f" {options.steps}, {options.interval:g} s windows, min {options.min_requests}"
          f" canary requests a window, false-alarm budget"
          f" {traffic.limits.false_alarm_rate:g}\n")  # fmt: skip
    print("| scenario | rolled back | by a gate | before 50% | median canary requests to"
          " rollback | median windows | seconds |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for index, scenario in enumerate(scenarios()):
        if options.scenario not in scenario.name:
            continue
        started = time.perf_counter()
        summary = summarize(simulate(scenario, traffic, options.rollouts, options.seed + index))
        took = time.perf_counter() - started
        requests = "-" if summary.median_requests is None else f"{summary.median_requests:.0f}"
        windows = "-" if summary.median_windows is None else f"{summary.median_windows:g}"
        print(f"| {scenario.name} | {summary.rolled_back:.1%} | {summary.by_gates:.1%} |"
              f" {summary.before_half:.1%} |"
              f" {requests} | {windows} | {took:.1f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
