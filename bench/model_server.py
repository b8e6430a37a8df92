"""Native engine against `mlflow models serve`: the same models, the same load, one run.

Run: .venv/bin/python bench/model_server.py [--duration 5] [--quick] [--over-rest]
     .venv/bin/python bench/model_server.py --zoo [KIND ...]
Needs wrk (Debian: `apt-get install wrk`). Trains a linear model and a random forest into a
temporary registry, starts both engines on each, and drives them with wrk (one thread,
keep-alive) at concurrency 1, 16 and 64 with 1-row and 1,000-row JSON bodies. Prints
requests/s, p50 and p99 per engine and the native/mlflow ratios; also seconds from process
start to `/health` 200 and resident memory of each server's process tree (the native
engine's once its MLflow worker stopped: `WORKER_IDLE_SECONDS`). With `--over-rest`
both engines reach the registry through an MLflow server over it, as under `mlcanary up`.

With `--zoo`, measures every kind of the model zoo (`tests/zoo.py`, or the kinds named)
instead: one-row bodies at concurrency 16, one engine at a time, and prints a table of
throughput ratio, p50, start time and memory per kind, with the path the native engine took.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.settings import RegistrySettings
from common.supervision import wait_until_healthy
from orchestration.up import MLFLOW_START_SECONDS, UpOptions, mlflow_server
from tests.helpers import free_port
from tests.servers import ServerProcess, start_model_server
from tests.zoo import KINDS
from training.pipelines import ModelKind
from training.train import TrainOptions, train_and_register

WORKER_IDLE_SECONDS = 5
"""The native engine stops MLflow's worker after this long unused (default 60 s): the plain
rows of the load never use it, so memory is read once it has stopped (and right after the load)."""
ROW = {"hours_studied": 6.5, "sleep_hours": 7.0, "attendance_percent": 90.0, "previous_scores": 85}
LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open("{body}"):read("*a")
"""


@dataclass(frozen=True)
class Load:
    """One wrk run's result."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def body_file(folder: Path, rows: int) -> Path:
    """Write a `dataframe_split` body with `rows` rows and return its path."""
    data = [[ROW[c] + (i % 7) * 0.1 for c in ROW] for i in range(rows)]
    path = folder / f"body-{rows}.json"
    path.write_text(json.dumps({"dataframe_split": {"columns": list(ROW), "data": data}}))
    return path


def _milliseconds(text: str) -> float:
    found = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if found is None:
        raise ValueError(f"cannot read wrk's latency {text!r}")
    value, unit = found.groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def run_wrk(
    url: str, script: Path, connections: int, seconds: float, path: str = "/invocations"
) -> Load:
    """Drive `url + path` with wrk (one thread) and parse its summary."""
    done = subprocess.run(
        [
            "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
            "--timeout", "30s", "-s", str(script), f"{url}{path}",
        ],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    out = done.stdout
    if "50%" not in out:
        raise RuntimeError(f"wrk printed no latency distribution:\n{out}\n{done.stderr}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _milliseconds(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _milliseconds(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = int(bad.group(1)) if bad else 0
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if socket_errors:
        errors += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))
    return Load(rps, p50, p99, errors)


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MiB."""
    return sum(_tree_rss_kib(pid).values()) / 1024


def idle_tree_rss_mib(pid: int, timeout: float = 120) -> float:
    """Resident memory of the server's tree once its MLflow worker (if any) stopped, in MiB."""
    deadline = time.monotonic() + timeout
    while len(tree := _tree_rss_kib(pid)) > 1:
        if time.monotonic() > deadline:
            raise RuntimeError(f"MLflow's worker of {pid} still runs after {timeout} s")
        time.sleep(0.1)
    return sum(tree.values()) / 1024


def _tree_rss_kib(pid: int) -> dict[int, int]:
    """VmRSS of a process and each of its descendants, in KiB, by pid."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            status = (entry / "status").read_text()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        found = re.search(r"VmRSS:\s+(\d+) kB", status)
        rss[int(entry.name)] = int(found.group(1)) if found else 0
    tree, stack = {}, [pid]
    while stack:
        current = stack.pop()
        tree[current] = rss.get(current, 0)
        stack.extend(children.get(current, []))
    return tree


@dataclass(frozen=True)
class Measured:
    """One engine serving one zoo kind."""

    load: Load
    start_seconds: float
    memory_mib: float
    """After the load; with the native engine, once MLflow's worker (if any) stopped."""
    start_memory_mib: float
    """Once `/health` says 200 (the native engine's MLflow worker still running)."""
    path: str


def measure_kind(folder: Path, name: str, engine: str, seconds: float) -> Measured:
    """Serve one saved zoo kind with one engine and drive it with one-row bodies at c=16."""
    body = folder / f"{name}.json"
    body.write_bytes(KINDS[name].single_row())
    script = folder / f"{name}.lua"
    script.write_text(LUA.format(body=body))
    tracking = f"sqlite:///{folder / 'unused.db'}"
    extra = ("--mlflow-idle-s", str(WORKER_IDLE_SECONDS)) if engine == "native" else ()
    server = start_model_server(str(folder / name), tracking, folder / f"{name}-{engine}.log",
                                engine=engine, extra=extra)  # fmt: skip
    try:
        started = server.wait_healthy()
        at_start = tree_rss_mib(server.process.pid)
        path = ""
        if engine == "native":
            path = requests.get(f"{server.url}/metadata", timeout=10).json()["path"]
        run_wrk(server.url, script, 4, 2)  # warm caches and connections
        load = run_wrk(server.url, script, 16, seconds)
        after = tree_rss_mib(server.process.pid)
        settled = idle_tree_rss_mib(server.process.pid) if engine == "native" else after
        return Measured(load, started, settled, at_start, path)
    finally:
        server.stop()


def zoo(names: list[str], seconds: float) -> None:
    """Print the zoo table: every kind on both engines, one-row bodies at c=16."""
    print(f"{'kind':<24}{'x req/s':>8}{'native':>9}{'mlflow':>9}{'p50 native':>11}"
          f"{'p50 mlflow':>11}{'start n/m s':>13}{'memory n/m MiB':>16}{'start n':>8}"
          "  path")  # fmt: skip
    with tempfile.TemporaryDirectory() as folder_name:
        folder = Path(folder_name)
        for name in names:
            KINDS[name].save(folder / name, True)
            native = measure_kind(folder, name, "native", seconds)
            mlflow = measure_kind(folder, name, "mlflow", seconds)
            errors = native.load.errors + mlflow.load.errors
            print(
                f"{name:<24}{native.load.rps / mlflow.load.rps:>8.1f}{native.load.rps:>9.0f}"
                f"{mlflow.load.rps:>9.0f}{native.load.p50_ms:>9.2f}ms{mlflow.load.p50_ms:>9.2f}ms"
                f"{native.start_seconds:>7.1f}/{mlflow.start_seconds:<5.1f}"
                f"{native.memory_mib:>9.0f}/{mlflow.memory_mib:<6.0f}"
                f"{native.start_memory_mib:>8.0f}  {native.path}"
                + (f"  ({errors} non-2xx)" if errors else ""),
                flush=True,
            )


@contextmanager
def registry_server(settings: RegistrySettings, state: Path) -> Iterator[str]:
    """Run `mlcanary up`'s MLflow server over the embedded registry; yield its URL."""
    options = UpOptions(state=state, mlflow_port=free_port())
    server = mlflow_server(settings, options)
    server.start()
    try:
        url = f"http://{options.mlflow_host}:{options.mlflow_port}"
        asyncio.run(wait_until_healthy(server, f"{url}/health", MLFLOW_START_SECONDS))
        yield url
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--quick", action="store_true", help="linear model, c=1 and 64 only")
    parser.add_argument("--zoo", nargs="*", metavar="KIND", help="the model zoo's kinds instead")
    parser.add_argument(
        "--over-rest", action="store_true",
        help="serve through an MLflow server over the registry, as `mlcanary up` does",
    )  # fmt: skip
    arguments = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    if arguments.zoo is not None:
        zoo(arguments.zoo or list(KINDS), arguments.duration)
        return
    kinds = [ModelKind.linear] if arguments.quick else [ModelKind.linear, ModelKind.random_forest]
    concurrencies = [1, 64] if arguments.quick else [1, 16, 64]
    with tempfile.TemporaryDirectory() as folder_name, ExitStack() as stack:
        folder = Path(folder_name)
        settings = RegistrySettings.embedded_in(folder / "state")
        tracking = settings.tracking_uri
        if arguments.over_rest:
            tracking = stack.enter_context(registry_server(settings, folder / "state"))
        scripts = {}
        for rows in (1, 1000):
            script = folder / f"post-{rows}.lua"
            script.write_text(LUA.format(body=body_file(folder, rows)))
            scripts[rows] = script
        print(f"{'model':<14}{'engine':<8}{'body':>6}{'conc':>6}{'req/s':>10}"
              f"{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")  # fmt: skip
        summary = []
        for kind in kinds:
            result = train_and_register(TrainOptions(kind=kind, alias=""), settings)
            servers: dict[str, ServerProcess] = {}
            started: dict[str, float] = {}
            memory: dict[str, float] = {}
            loads: dict[tuple[str, int, int], Load] = {}
            for engine in ("native", "mlflow"):
                extra = ("--mlflow-idle-s", str(WORKER_IDLE_SECONDS)) if engine == "native" else ()
                server = start_model_server(
                    result.model_uri, tracking, folder / f"{engine}.log", engine=engine,
                    extra=extra,
                )  # fmt: skip
                servers[engine] = server
                try:
                    started[engine] = server.wait_healthy()
                    for rows, script in scripts.items():
                        run_wrk(server.url, script, 4, 2)  # warm caches and connections
                        for connections in concurrencies:
                            load = run_wrk(server.url, script, connections, arguments.duration)
                            loads[(engine, rows, connections)] = load
                            print(
                                f"{kind.value:<14}{engine:<8}{rows:>6}{connections:>6}"
                                f"{load.rps:>10.1f}{load.p50_ms:>9.2f}{load.p99_ms:>9.2f}"
                                f"{load.errors:>8}",
                                flush=True,
                            )
                    memory[engine] = (
                        idle_tree_rss_mib(server.process.pid)
                        if engine == "native"
                        else tree_rss_mib(server.process.pid)
                    )
                finally:
                    server.stop()
            summary.append((kind, loads, started, memory))
        print("\nnative / mlflow")
        for kind, loads, started, memory in summary:
            for rows in (1, 1000):
                for connections in concurrencies:
                    native, mlflow = (
                        loads[("native", rows, connections)],
                        loads[("mlflow", rows, connections)],
                    )
                    print(
                        f"{kind.value:<14} body {rows:>4} c={connections:<3} "
                        f"req/s x{native.rps / mlflow.rps:6.1f}   "
                        f"p50 {native.p50_ms:.2f} vs {mlflow.p50_ms:.2f} ms "
                        f"(x{native.p50_ms / mlflow.p50_ms:.2f})"
                    )
            print(
                f"{kind.value:<14} /health after start: native {started['native']:.1f} s, "
                f"mlflow {started['mlflow']:.1f} s; memory: native {memory['native']:.0f} MiB, "
                f"mlflow {memory['mlflow']:.0f} MiB (x{memory['native'] / memory['mlflow']:.2f})"
            )


if __name__ == "__main__":
    main()
