"""The router against nginx and against no proxy: the same upstreams, the same load, one run.

Run: .venv/bin/python bench/router.py [--duration 5] [--repeat 3] [--upstream trivial|native|both]
Needs wrk and nginx (Debian: `apt-get install wrk nginx-light`). Upstreams: two trivial aiohttp
apps answering a fixed prediction, or two native model servers (linear model). Proxies: the
router at weight 10, nginx with the same 90/10 split and keep-alive to upstreams, or none
(wrk straight at the stable upstream). For each: requests/s, p50, p99, the CPU seconds the
proxy's processes spent per 1,000 requests (from /proc; upstreams and wrk not counted), and the
whole machine's CPU per request and busy share (from /proc/stat). Each cell is run `--repeat`
times, the three setups interleaved so that a drift of the shared machine hits them alike;
the summary uses the medians.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.model_server import Load, run_wrk
from contracts.routing import RoutingConfig, write_routing_file
from tests.helpers import free_port

ROW = '{"dataframe_split": {"columns": ["hours_studied", "sleep_hours", "attendance_percent", "previous_scores"], "data": [[6.5, 7.0, 90.0, 85]]}}'  # noqa: E501
LUA = (
    'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = \'{body}\'\n'
)
NGINX = """worker_processes {workers};
daemon off;
pid {folder}/nginx.pid;
error_log {folder}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {folder}/body;
  proxy_temp_path {folder}/proxy;
  upstream models {{
    server 127.0.0.1:{stable} weight=9;
    server 127.0.0.1:{canary} weight=1;
    keepalive 128;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://models;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


@dataclass
class Proc:
    """A started process and the port it serves."""

    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start(argv: list[str], port: int, ready_path: str = "/ping", **env: str) -> Proc:
    """Start a server process in its own group and wait for `ready_path` to answer 200."""
    process = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, **env}, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{ready_path}", timeout=1):
                return Proc(process, port)
        except urllib.error.HTTPError:
            return Proc(process, port)  # it answered: up, whatever it thinks of the request
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{argv} did not come up")


def stop(proc: Proc) -> None:
    """SIGTERM the process group and wait."""
    try:
        os.killpg(proc.process.pid, 15)
    except ProcessLookupError:
        return
    proc.process.wait(timeout=30)


def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of a process and its children so far.

    Live direct children are read one by one; children that ended (an idle worker stopped)
    are in the process's own cutime and cstime once it has waited for them.
    """
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid:
            total += sum(int(n) for n in fields[11:15]) / tick  # utime stime cutime cstime
        elif int(fields[1]) == pid:  # a live direct child
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def machine_cpu() -> tuple[float, float]:
    """Busy and total CPU seconds of the whole machine so far, all cores (from /proc/stat)."""
    fields = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    total = sum(fields[:8]) / tick  # guest time is already inside user time
    idle = (fields[3] + fields[4]) / tick  # idle + iowait
    return total - idle, total


@dataclass
class Cell:
    """One wrk run: its result, the proxy's CPU, and the whole machine's."""

    load: Load
    proxy_ms: float
    """CPU ms per request of the proxy's processes (0 without a proxy)."""
    machine_ms: float
    """CPU ms per request of everything on the machine: wrk, upstreams, proxy, kernel."""
    busy: float
    """Fraction of all cores busy during the run."""


def measure(url: str, script: Path, connections: int, seconds: float, proxy: Proc | None) -> Cell:
    """Run wrk; return its result, the proxy's and the machine's CPU per request."""
    before = cpu_seconds(proxy.process.pid) if proxy else 0.0
    busy_before, total_before = machine_cpu()
    load = run_wrk(url, script, connections, seconds)
    busy_after, total_after = machine_cpu()
    spent = (cpu_seconds(proxy.process.pid) - before) if proxy else 0.0
    requests = load.rps * round(seconds) or 1.0
    busy = busy_after - busy_before
    return Cell(
        load,
        spent / requests * 1000 if proxy else 0.0,
        busy / requests * 1000,
        busy / max(total_after - total_before, 1e-9),
    )


def upstreams(kind: str, folder: Path) -> tuple[Proc, Proc]:
    """Start two upstreams of the given kind."""
    if kind == "trivial":
        here = Path(__file__).resolve().parent / "trivial_upstream.py"
        first, second = free_port(), free_port()
        return (
            start([sys.executable, str(here), str(first), "1"], first),
            start([sys.executable, str(here), str(second), "2"], second),
        )
    from common.settings import RegistrySettings
    from training.pipelines import ModelKind
    from training.train import TrainOptions, train_and_register

    settings = RegistrySettings.embedded_in(folder / "state")
    result = train_and_register(TrainOptions(kind=ModelKind.linear, alias=""), settings)
    servers = []
    for _ in range(2):
        port = free_port()
        servers.append(
            start(
                [
                    sys.executable,
                    "-m",
                    "mlcanary",
                    "serve-model",
                    result.model_uri,
                    "--port",
                    str(port),
                ],
                port,
                "/health",
                MLFLOW_TRACKING_URI=settings.tracking_uri,
            )
        )
    return servers[0], servers[1]


def write_split(stable: Proc, canary: Proc, folder: Path, log_percent: float = 0) -> Path:
    """Write the routing file every router bench uses: canary at weight 10, as nginx's 9:1."""
    path = folder / f"routing-log-{log_percent:g}.yaml"
    write_routing_file(
        path,
        RoutingConfig.model_validate(
            {
                "model": "StudentExamPredictor",
                # Both speak MLflow's protocol and V2 (ours and the trivial stand-in do).
                "stable": {"url": stable.url, "version": "1", "protocols": ["mlflow", "v2"]},
                "canary": {
                    "url": canary.url,
                    "version": "2",
                    "weight": 10,
                    "protocols": ["mlflow", "v2"],
                },
                # Counted as in a rollout: ten buckets, as cut at a model's deciles.
                "predictions": {
                    "version": "1",
                    "outputs": {
                        "predictions": {
                            "edges": [10.0 * decile for decile in range(1, 10)],
                        }
                    },
                },
                "log": {"percent": log_percent},
            }
        ),
    )
    return path


def proxies(
    stable: Proc, canary: Proc, folder: Path, router_workers: int, prototype: bool, plane: str
) -> dict[str, Proc]:
    """Start the router (or the raw-bytes prototype), the router recording every answer in its
    prediction log, and nginx in front of the two upstreams."""
    path = write_split(stable, canary, folder)
    router_port, nginx_port, logged_port = free_port(), free_port(), free_port()
    router_argv = [
        sys.executable,
        "-m",
        "mlcanary",
        "router",
        "--config",
        str(path),
        "--port",
        str(router_port),
    ]
    if router_workers > 1:
        router_argv += ["--workers", str(router_workers)]
    router_argv += ["--data-plane", plane]
    logged_argv = [*router_argv, "--prediction-log", str(folder / "predictions")]
    logged_argv[logged_argv.index("--config") + 1] = str(write_split(stable, canary, folder, 100))
    logged_argv[logged_argv.index("--port") + 1] = str(logged_port)
    if prototype:
        here = Path(__file__).resolve().parent / "raw_proxy_prototype.py"
        router_argv = [
            sys.executable,
            str(here),
            str(router_port),
            str(stable.port),
            str(canary.port),
        ]
    config = folder / "nginx.conf"
    config.write_text(
        NGINX.format(
            workers=router_workers,
            folder=folder,
            stable=stable.port,
            canary=canary.port,
            port=nginx_port,
        )
    )
    return {
        "router": start(router_argv, router_port, "/invocations" if prototype else "/ping"),
        "logged": start(logged_argv, logged_port, "/ping"),
        "nginx": start(["nginx", "-c", str(config), "-p", str(folder)], nginx_port, "/ping"),
    }


NAMES = ("direct", "router", "logged", "nginx")
"""`logged`: the router with `log: {percent: 100}`, every answer recorded."""


def print_cell(kind: str, proxy: str, connections: int, cell: Cell) -> None:
    """Print one run as a table row."""
    load = cell.load
    print(
        f"{kind:<9}{proxy:<8}{connections:>5}{load.rps:>10.0f}{load.p50_ms:>9.2f}"
        f"{load.p99_ms:>9.2f}{load.errors:>8}{cell.proxy_ms:>12.3f}"
        f"{cell.machine_ms:>16.3f}{cell.busy:>6.0%}",
        flush=True,
    )


def median_cell(cells: list[Cell]) -> Cell:
    """The median of each figure over repeated runs (errors summed)."""
    return Cell(
        Load(
            statistics.median(c.load.rps for c in cells),
            statistics.median(c.load.p50_ms for c in cells),
            statistics.median(c.load.p99_ms for c in cells),
            sum(c.load.errors for c in cells),
        ),
        statistics.median(c.proxy_ms for c in cells),
        statistics.median(c.machine_ms for c in cells),
        statistics.median(c.busy for c in cells),
    )


def summarize(
    kind: str, connections: int, direct: Cell, router: Cell, logged: Cell, nginx: Cell
) -> None:
    """Print one concurrency's comparison of the router, nginx and no proxy."""
    added = (router.load.p50_ms - direct.load.p50_ms, nginx.load.p50_ms - direct.load.p50_ms)
    print(
        f"  {kind} c={connections}: router cpu/req = {router.proxy_ms / nginx.proxy_ms:.2f}x nginx;"
        f" router req/s = {router.load.rps / direct.load.rps:.0%} of direct"
        f" (nginx {nginx.load.rps / direct.load.rps:.0%}); p50 added: router"
        f" {added[0]:+.2f} ms, nginx {added[1]:+.2f} ms; cores busy: direct {direct.busy:.0%},"
        f" router {router.busy:.0%}, nginx {nginx.busy:.0%}; logging every answer: cpu/req"
        f" {logged.proxy_ms / router.proxy_ms:.2f}x the router without"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--upstream", choices=["trivial", "native", "both"], default="both")
    parser.add_argument(
        "--router-workers", type=int, default=1,
        help="router processes (--workers), and as many nginx worker processes",
    )  # fmt: skip
    parser.add_argument(
        "--repeat", type=int, default=3, help="interleaved runs per cell; medians are reported"
    )
    parser.add_argument(
        "--prototype", action="store_true", help="measure bench/raw_proxy_prototype.py instead"
    )
    parser.add_argument("--data-plane", choices=["aiohttp", "raw"], default="raw")
    arguments = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed: apt-get install wrk nginx-light")
    kinds = ["trivial", "native"] if arguments.upstream == "both" else [arguments.upstream]
    print(f"{'upstream':<9}{'proxy':<8}{'conc':>5}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'errors':>8}{'cpu ms/req':>12}{'machine ms/req':>16}{'busy':>6}")  # fmt: skip
    for kind in kinds:
        with tempfile.TemporaryDirectory() as name:
            folder = Path(name)
            script = folder / "post.lua"
            script.write_text(LUA.format(body=ROW))
            stable, canary = upstreams(kind, folder)
            fronts = proxies(
                stable,
                canary,
                folder,
                arguments.router_workers,
                arguments.prototype,
                arguments.data_plane,
            )
            results: dict[tuple[str, int], list[Cell]] = {}
            named = {"direct": None, **fronts}
            try:
                for proxy in named.values():
                    run_wrk(proxy.url if proxy else stable.url, script, 8, 2)  # warm up
                for connections in (1, 16, 64):
                    for _ in range(arguments.repeat):  # interleaved: drifts hit all three alike
                        for name_, proxy in named.items():
                            url = proxy.url if proxy else stable.url
                            cell = measure(url, script, connections, arguments.duration, proxy)
                            results.setdefault((name_, connections), []).append(cell)
                            print_cell(kind, name_, connections, cell)
            finally:
                for proc in (*fronts.values(), stable, canary):
                    stop(proc)
            if arguments.repeat > 1:
                print(f"medians of {arguments.repeat} interleaved runs:")
            for connections in (1, 16, 64):
                medians = [median_cell(results[(n, connections)]) for n in NAMES]
                for name_, cell in zip(NAMES, medians, strict=True):
                    print_cell(kind, name_, connections, cell)
                summarize(kind, connections, *medians)


if __name__ == "__main__":
    main()
