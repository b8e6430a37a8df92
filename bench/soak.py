"""Soak and chaos: `mlcanary up` under steady traffic, late labels, rollouts and faults.

Run: make soak MINUTES=60   (or .venv/bin/python bench/soak.py --minutes 60 --out docs/soak)

It registers models whose verdict is known (`bench.soaking.models`) into a fresh state folder,
puts the prediction log on a small filesystem of its own (a tmpfs, so that its disk can be
filled), starts `mlcanary up` on free loopback ports, and then for `--minutes`: sends requests
at `--rate` with their labels 5 s later (`traffic`), rolls out one known model after another,
and breaks things on a schedule, some at once (`faults`), sampling every process and folder
every 10 s (`sampling`). At the end it stops `up`, checks that every process it started is
gone, judges the run (`report`) and writes the report (`writing`). It exits 1 naming each
check that failed.

Loopback only: every server it starts binds 127.0.0.1, and it sends to nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from itertools import cycle
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from bench.soaking.faults import (
    Faults,
    Happened,
    System,
)
from bench.soaking.models import Truth, register_truths
from bench.soaking.report import (
    Failure,
    Slope,
    Verdict,
    classify_failures,
    folder_checks,
    judge_run,
    label_outcomes,
    slopes,
)
from bench.soaking.sampling import SAMPLE_S, ProcessSample, folder_sizes, sample_processes
from bench.soaking.traffic import Traffic
from bench.soaking.writing import write_report
from common.settings import RegistrySettings
from common.supervision import ProcessIdentity, free_port, start_announced, stop_announced

HOST = "127.0.0.1"
DISK_MIB = 256
"""The prediction log's filesystem: an hour at 20 requests/s writes about 30 MiB."""
ROLLOUT = {"steps": [25, 50, 100], "interval_s": 10, "min_requests": 20, "min_labels": 20,
           "label_wait_s": 60, "reason": "soak"}  # fmt: skip
"""Each rollout's plan: three steps of 10 s windows, judged on labels too."""
DONE = ("promoted", "rolled_back", "aborted")


@dataclass
class Soaked:
    """What a soak saw, before it is judged."""

    started: float
    traffic: dict[str, Any]
    failures: list[Failure]
    verdicts: list[Verdict]
    faults: list[Happened]
    labels: dict[str, Any]
    slopes: list[Slope]
    samples: list[ProcessSample]
    sizes: list[tuple[float, dict[str, int]]]


def main() -> None:
    """Run the soak; exit 1 if a check failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second")
    parser.add_argument("--out", type=Path, default=Path("docs/soak"))
    parser.add_argument(
        "--short", action="store_true", help="each fault once, none at once (the suite's run)"
    )
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlcanary-soak-") as folder:
        summary = run(Path(folder), options.minutes, options.rate, options.short)
        summary["command"] = shlex.join(["bench/soak.py", *sys.argv[1:]])
        write_report(options.out, summary, summary.pop("_samples"), summary.pop("_sizes"))
        if summary["checks"]["failed"]:  # every process's log, to tell why
            logs = options.out / "logs"
            shutil.copytree(Path(folder) / "state" / "logs", logs, dirs_exist_ok=True)
            shutil.copy(Path(folder) / "up.log", logs)
    print(json.dumps(summary["checks"], indent=1))
    if summary["checks"]["failed"]:
        sys.exit(1)


def run(folder: Path, minutes: float, rate: float, short: bool) -> dict[str, Any]:
    """Set up, soak for `minutes`, stop, and return the summary (samples under `_samples`)."""
    state = folder / "state"
    state.mkdir()
    settings = RegistrySettings.embedded_in(state)
    stable, truths = register_truths(settings)
    mount = _mount_disk(folder / "disk", state / "predictions")
    router_port, controller_port, mlflow_port = free_port(HOST), free_port(HOST), free_port(HOST)
    environment = {**os.environ, "MLCANARY_HOME": str(state), "CANARY_PROBABILITY": "0.1",
                   "DEFAULT_MODEL_VERSION": stable}  # fmt: skip
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        environment.pop(name, None)
    up_log = (folder / "up.log").open("wb")
    # Announced to this process's guardian: if the soak itself is killed (a test's timeout),
    # `up` is stopped with everything it started, never left running.
    up, up_identity = start_announced(
        [sys.executable, "-m", "mlcanary", "up", "--host", HOST, "--port", str(router_port),
         "--controller-port", str(controller_port), "--mlflow-host", HOST,
         "--mlflow-port", str(mlflow_port)],
        env=environment, stdout=up_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    system = System(up.pid, state, f"http://{HOST}:{router_port}",
                    f"http://{HOST}:{controller_port}", mount)  # fmt: skip
    seen: dict[int, ProcessIdentity] = {}
    try:
        soaked = asyncio.run(_soak(system, truths, minutes, rate, short, seen))
    finally:
        stop_announced([(up, up_identity)], grace=180)
        up_log.close()
        left = _still_running(seen)
        if mount is not None:
            subprocess.run(["umount", "-l", str(mount)], check=False)
    checks = judge_run(
        soaked.failures, soaked.verdicts, soaked.labels, soaked.slopes,
        folder_checks(soaked.sizes), left,
        [f.name for f in soaked.faults if f.note.startswith("skipped") and not short],
    )  # fmt: skip
    return {
        "started": soaked.started,
        "minutes": minutes,
        "rate": rate,
        "stable": stable,
        "machine": f"{platform.node()}: {os.cpu_count()} cores, {platform.platform()}",
        "checks": asdict(checks),
        "traffic": soaked.traffic,
        "failures_by_allowance": dict(Counter(f.allowed_by for f in soaked.failures)),
        "failures_outside": [asdict(f) for f in soaked.failures if not f.allowed_by][:50],
        "verdicts": [{**asdict(v), "right": v.right} for v in soaked.verdicts],
        "faults": [asdict(f) for f in soaked.faults],
        "labels": soaked.labels,
        "slopes": [asdict(s) for s in soaked.slopes],
        "folders": soaked.sizes[-1][1] if soaked.sizes else {},
        "left_running": left,
        "_samples": soaked.samples,
        "_sizes": soaked.sizes,
    }


def _mount_disk(mount: Path, predictions: Path) -> Path | None:
    """Mount a tmpfs of `DISK_MIB` at `mount` and point `predictions` into it (root only);
    None, with the prediction log left on the state's disk, where that cannot be done."""
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MIB}m,mode=0700", "tmpfs", str(mount)],
        capture_output=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        print(f"no disk of its own for the prediction log: {done.stderr.decode().strip()}")
        return None
    (mount / "predictions").mkdir()
    predictions.symlink_to(mount / "predictions")
    return mount


async def _soak(system: System, truths: list[Truth], minutes: float, rate: float, short: bool,
                seen: dict[int, ProcessIdentity]) -> Soaked:  # fmt: skip
    token = await _wait_until_up(system)
    traffic = Traffic(system.router_url, token, rate)
    faults = Faults(system, labels_paused=traffic.labels_paused)
    admin = {"Authorization": f"Bearer {token}"}
    samples: list[ProcessSample] = []
    sizes: list[tuple[float, dict[str, int]]] = []
    verdicts: list[Verdict] = []
    judged: list[tuple[float, float, Truth]] = []
    started = time.time()
    end = time.monotonic() + minutes * 60
    async with aiohttp.ClientSession(headers=admin) as session:

        async def rollout_running() -> bool:
            status, state = await _call(session, "GET", f"{system.controller_url}/api/rollout")
            return status == 200 and state.get("status") == "running"

        async def router_answers() -> bool:
            status, _ = await _call(session, "GET", f"{system.router_url}/ping")
            return status == 200

        faults.rollout_running = rollout_running

        async def sample() -> None:
            while True:
                found = await asyncio.to_thread(sample_processes, system)
                for item in found:
                    seen.setdefault(
                        item.pid, ProcessIdentity.of(item.pid) or ProcessIdentity(item.pid, 0)
                    )
                samples.extend(found)
                sizes.append((time.time(), await asyncio.to_thread(folder_sizes, system.state)))
                await asyncio.sleep(SAMPLE_S)

        async def rollouts() -> None:
            for truth in cycle(truths):
                if time.monotonic() > end:
                    return
                began = time.time()
                verdict = await _roll_out(session, system, truth)
                verdicts.append(verdict)
                judged.append((began, time.time(), truth))

        sampler = asyncio.create_task(sample())
        sending = asyncio.create_task(traffic.send())
        labelling = asyncio.create_task(traffic.label())
        rolling = asyncio.create_task(rollouts())
        await _schedule(faults, router_answers, end, short)
        await rolling  # the last rollout ends with its verdict
        traffic.stop.set()
        await sending
        await labelling
        sampler.cancel()
    disk_full = [
        (f.began, f.ended) for f in faults.happened if f.name == "prediction log disk full"
    ]
    return Soaked(
        started=started,
        traffic=traffic.summary(),
        failures=classify_failures(
            [(o.sent, o.done, o.cause, o.variant, o.detail) for o in traffic.outcomes if o.cause],
            faults.windows(),
            [(began, ended) for began, ended, truth in judged if truth.own_errors],
        ),
        verdicts=verdicts,
        faults=faults.happened,
        labels=label_outcomes([(x.state, x.reason, x.answered) for x in traffic.labels], disk_full),
        slopes=slopes(samples),
        samples=samples,
        sizes=sizes,
    )


async def _schedule(faults: Faults, router_answers: Any, end: float, short: bool) -> None:
    """Break things until `end`: one of each fault in turn, then (the hour-long run) some at
    once, round after round; the short run does each once, one at a time, for 20 s where a
    fault lasts (a minute in the long run)."""
    lasting = 20.0 if short else 60.0
    rounds: list[list[Callable[[], Awaitable[None]]]] = [
        [faults.kill_canary],
        [lambda: faults.restart_router(router_answers)],
        [faults.kill_controller],
        [lambda: faults.bad_routing_edit(lasting)],
        [lambda: faults.pause_labels(lasting)],
        [lambda: faults.fill_disk(lasting)],
        [lambda: faults.stop_mlflow(lasting)],
    ]
    if not short:  # and overlapping: a controller killed while MLflow hangs, and so on
        rounds += [
            [lambda: faults.stop_mlflow(lasting), faults.kill_controller],
            [lambda: faults.fill_disk(lasting), lambda: faults.pause_labels(lasting),
             faults.kill_canary],
            [lambda: faults.restart_router(router_answers),
             lambda: faults.bad_routing_edit(lasting)],
        ]  # fmt: skip
    gap = 15.0 if short else 90.0
    number = 0
    while time.monotonic() + gap < end and (not short or number < len(rounds)):
        await asyncio.sleep(gap)
        await asyncio.gather(*(start() for start in rounds[number % len(rounds)]))
        number += 1
    await asyncio.sleep(max(0.0, end - time.monotonic()))


async def _wait_until_up(system: System, within: float = 600.0) -> str:
    """Wait until the router and the controller answer; return the admin token."""
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as session:
        while True:
            router, _ = await _call(session, "GET", f"{system.router_url}/health")
            controller, _ = await _call(session, "GET", f"{system.controller_url}/ping")
            token = system.state / "admin-token"
            if router == 200 and controller == 200 and token.exists():
                return token.read_text().strip()
            if time.monotonic() > deadline or not system.alive(system.up_pid):
                raise RuntimeError(
                    "mlcanary up did not come up; its output ends:\n"
                    + (system.state.parent / "up.log").read_text(errors="replace")[-3000:]
                )
            await asyncio.sleep(0.5)


async def _call(session: aiohttp.ClientSession, method: str, url: str,
                body: Any = None) -> tuple[int, dict[str, Any]]:  # fmt: skip
    """Send one JSON request; (0, {}) when nothing answered."""
    try:
        async with session.request(method, url, json=body,
                                   timeout=aiohttp.ClientTimeout(total=120)) as answer:  # fmt: skip
            try:
                found = await answer.json(content_type=None)
            except ValueError:
                found = {}
            return answer.status, found if isinstance(found, dict) else {"answer": found}
    except (aiohttp.ClientError, TimeoutError):
        return 0, {}


async def _until_done(make: Callable[[], Awaitable[tuple[int, dict[str, Any]]]],
                      within: float = 900.0) -> tuple[int, dict[str, Any]]:  # fmt: skip
    """Call until something other than "nobody answered" or a 5xx comes back (the controller
    may be restarting); the last answer after `within`."""
    deadline = time.monotonic() + within
    while True:
        status, found = await make()
        if (status and status < 500) or time.monotonic() > deadline:
            return status, found
        await asyncio.sleep(1.0)


async def _roll_out(session: aiohttp.ClientSession, system: System, truth: Truth) -> Verdict:
    """Deploy `truth`'s version as the canary at 0%, roll it out, wait for the verdict."""
    api = f"{system.controller_url}/api"

    def verdict(status: str, failed: tuple[str, ...] = (), message: str = "") -> Verdict:
        return Verdict(truth.name, truth.version, truth.outcome, status, failed,
                       tuple(sorted(truth.gates)), message)  # fmt: skip

    deploy = {"version": truth.version, "weight": 0, "reason": f"soak: {truth.name}"}
    status, found = await _until_done(lambda: _call(session, "POST", f"{api}/deploy", deploy))
    if status != 200:
        return verdict(f"deploy refused: {status}", message=str(found)[:300])
    status, found = await _until_done(lambda: _call(session, "POST", f"{api}/rollout", ROLLOUT))
    if status != 200:
        return verdict(f"rollout refused: {status}", message=str(found)[:300])
    while True:
        await asyncio.sleep(2.0)
        status, state = await _until_done(lambda: _call(session, "GET", f"{api}/rollout"))
        if state.get("canary_version") == truth.version and state.get("status") in DONE:
            failed = tuple(
                sorted(
                    {
                        gate["gate"]
                        for entry in state.get("history", [])
                        for gate in entry.get("gates", [])
                        if not gate["passed"]
                    }
                )
            )
            return verdict(str(state["status"]), failed, str(state.get("message", ""))[:300])


def _still_running(seen: dict[int, ProcessIdentity], within: float = 60.0) -> list[int]:
    """The processes the run saw that are still alive `within` s after `up` exited (guardians
    and servers end a moment after it)."""
    deadline = time.monotonic() + within
    while True:
        left = sorted(pid for pid, identity in seen.items() if identity.alive())
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


if __name__ == "__main__":
    main()
