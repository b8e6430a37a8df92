"""The Open Inference Protocol measured: our model server against MLServer, the router over both.

Run: .venv/bin/python bench/v2.py [--duration 5] [--kinds linear random_forest gradient_boosting]
Needs wrk and MLServer's environment (`make peers`). For each kind it trains the demo model into
a temporary registry and serves the same registered artifact three ways: our model server
(`serve-model`, V2 and `/invocations` on one port), MLServer with its MLflow runtime, and
MLServer with its scikit-learn runtime on the same fitted estimator (joblib), each with its
default settings. wrk (one thread, keep-alive) sends the same one-row V2 requests at concurrency
1, 16 and 64: one FP64 input per column to ours and to the MLflow runtime, one [1, 4] tensor to
ours and to the scikit-learn runtime (which reads one tensor). Then a router
(`mlcanary router`, its raw plane) in front of each server, the same requests through it; and
in front of ours, `/invocations` with the same row for the reference. Prints req/s, p50, p99
and server CPU ms per request, ratios against MLServer, and the router's added CPU per request
on V2 against `/invocations`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.model_server import LUA, Load, run_wrk
from bench.router import Proc, cpu_seconds, start, stop
from contracts.routing import RoutingConfig, write_routing_file
from tests.helpers import free_port
from tests.peers import MISSING, MLSERVER, SKLEARN_RUNTIME, PeerModel

ROW = {
    "hours_studied": 6.5,
    "sleep_hours": 7.0,
    "attendance_percent": 90.0,
    "previous_scores": 85.0,
}
COLUMNS_REQUEST = {"inputs": [{"name": n, "shape": [1, 1], "datatype": "FP64", "data": [v]}
                              for n, v in ROW.items()]}  # fmt: skip
TENSOR_REQUEST = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                              "data": list(ROW.values())}]}  # fmt: skip
MLFLOW_REQUEST = {"dataframe_records": [ROW]}
CONCURRENCY = (1, 16, 64)
MODEL = "StudentExamPredictor"


@dataclass(frozen=True)
class Cell:
    """One wrk run against one server: its load and the server's CPU per request."""

    load: Load
    cpu_ms: float


def measure(url: str, path: str, body: Path, connections: int, seconds: float, proc: Proc) -> Cell:
    """Drive `url + path` with `body`; return wrk's figures and the CPU `proc` (and its child
    processes: MLServer's inference worker, our MLflow worker) spent per request."""
    script = body.with_suffix(".lua")
    script.write_text(LUA.format(body=body))
    before = cpu_seconds(proc.process.pid)
    load = run_wrk(url, script, connections, seconds, path=path)
    spent = cpu_seconds(proc.process.pid) - before
    return Cell(load, spent / max(load.rps * round(seconds), 1.0) * 1000)


def write_body(folder: Path, name: str, document: Any) -> Path:
    path = folder / f"{name}.json"
    path.write_text(json.dumps(document))
    return path


def train(kind: str, folder: Path) -> tuple[str, Path, Path, str]:
    """Register one model; return its URI, the downloaded artifact, a joblib copy, the registry."""
    import joblib
    import mlflow
    import mlflow.sklearn

    from common.settings import RegistrySettings
    from training.pipelines import ModelKind
    from training.train import TrainOptions, train_and_register

    settings = RegistrySettings.embedded_in(folder / "state")
    result = train_and_register(TrainOptions(kind=ModelKind(kind), alias=""), settings)
    mlflow.set_tracking_uri(settings.tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts(result.model_uri, dst_path=str(folder)))
    estimator = joblib.dump(mlflow.sklearn.load_model(str(local)), folder / "model.joblib")
    return result.model_uri, local, Path(estimator[0]), settings.tracking_uri


def serve_ours(uri: str, tracking: str) -> Proc:
    port = free_port()
    argv = [sys.executable, "-m", "mlcanary", "serve-model", uri, "--port", str(port),
            "--model-name", "exam"]  # fmt: skip
    return start(argv, port, "/health", MLFLOW_TRACKING_URI=tracking)


def serve_mlserver(model: PeerModel, folder: Path) -> Proc:
    """MLServer with its default settings (one inference worker process) on free ports."""
    folder.mkdir(parents=True)
    port = free_port()
    settings = {"host": "127.0.0.1", "http_port": port, "grpc_port": free_port(),
                "metrics_port": free_port()}  # fmt: skip
    (folder / "settings.json").write_text(json.dumps(settings))
    home = folder / "models" / model.name
    home.mkdir(parents=True)
    (home / "model-settings.json").write_text(json.dumps({
        "name": model.name, "implementation": model.runtime,
        "parameters": {"uri": str(model.uri), "version": model.version},
    }))  # fmt: skip
    return start([str(MLSERVER), "start", str(folder)], port, "/v2/health/ready")


def serve_router(server: Proc, folder: Path, name: str, model_name: str) -> Proc:
    """A router with `server` as its only variant, speaking both protocols to it."""
    path = folder / f"routing-{name}.yaml"
    write_routing_file(path, RoutingConfig.model_validate({
        "model": MODEL,
        "stable": {"url": server.url, "version": "1", "protocols": ["mlflow", "v2"],
                   "model_name": model_name},
    }))  # fmt: skip
    port = free_port()
    argv = [sys.executable, "-m", "mlcanary", "router", "--config", str(path), "--port", str(port)]
    return start(argv, port)


def print_row(label: str, connections: int, cell: Cell, reference: Cell | None = None) -> None:
    ratio = f"{cell.load.rps / reference.load.rps:7.1f}x" if reference else "        "
    print(
        f"{label:<34} c={connections:<3} {cell.load.rps:9.0f} req/s {ratio}  "
        f"p50 {cell.load.p50_ms:7.2f} ms  p99 {cell.load.p99_ms:7.2f} ms  "
        f"cpu {cell.cpu_ms:6.3f} ms/req  errors {cell.load.errors}",
        flush=True,
    )


def bench_kind(kind: str, folder: Path, seconds: float) -> None:
    uri, local, estimator, tracking = train(kind, folder)
    bodies = {
        "columns": write_body(folder, "columns", COLUMNS_REQUEST),
        "tensor": write_body(folder, "tensor", TENSOR_REQUEST),
        "mlflow": write_body(folder, "mlflow", MLFLOW_REQUEST),
    }
    servers = {
        "ours": serve_ours(uri, tracking),
        "mlserver-mlflow": serve_mlserver(PeerModel("exam", local), folder / "mlserver-mlflow"),
        "mlserver-sklearn": serve_mlserver(
            PeerModel("exam", estimator, runtime=SKLEARN_RUNTIME), folder / "mlserver-sklearn"
        ),
    }
    routers: dict[str, Proc] = {}
    infer = "/v2/models/exam/infer"
    try:
        for name, server in servers.items():
            routers[name] = serve_router(server, folder, name, "exam")
        print(f"\n== {kind}", flush=True)
        for connections in CONCURRENCY:
            direct = {
                "ours V2 columns": measure(servers["ours"].url, infer, bodies["columns"],
                                           connections, seconds, servers["ours"]),
                "mlserver-mlflow V2 columns": measure(
                    servers["mlserver-mlflow"].url, infer, bodies["columns"], connections,
                    seconds, servers["mlserver-mlflow"]),
                "ours V2 tensor": measure(servers["ours"].url, infer, bodies["tensor"],
                                          connections, seconds, servers["ours"]),
                "mlserver-sklearn V2 tensor": measure(
                    servers["mlserver-sklearn"].url, infer, bodies["tensor"], connections,
                    seconds, servers["mlserver-sklearn"]),
                "ours /invocations": measure(servers["ours"].url, "/invocations",
                                             bodies["mlflow"], connections, seconds,
                                             servers["ours"]),
            }  # fmt: skip
            print_row("ours V2 columns", connections, direct["ours V2 columns"],
                      direct["mlserver-mlflow V2 columns"])  # fmt: skip
            print_row("mlserver-mlflow V2 columns", connections,
                      direct["mlserver-mlflow V2 columns"])  # fmt: skip
            print_row("ours V2 tensor", connections, direct["ours V2 tensor"],
                      direct["mlserver-sklearn V2 tensor"])  # fmt: skip
            print_row("mlserver-sklearn V2 tensor", connections,
                      direct["mlserver-sklearn V2 tensor"])  # fmt: skip
            print_row("ours /invocations", connections, direct["ours /invocations"])
            routed = f"/v2/models/{MODEL}/infer"
            for name, body in (("ours", "columns"), ("mlserver-mlflow", "columns"),
                               ("mlserver-sklearn", "tensor")):  # fmt: skip
                router = routers[name]
                cell = measure(router.url, routed, bodies[body], connections, seconds,
                               router)  # fmt: skip
                print_row(f"router -> {name} V2 (router cpu)", connections, cell)
            reference = measure(routers["ours"].url, "/invocations", bodies["mlflow"],
                                connections, seconds, routers["ours"])  # fmt: skip
            print_row("router -> ours /invocations (router cpu)", connections, reference)
    finally:
        for proc in [*routers.values(), *servers.values()]:
            stop(proc)


def bench_router_protocols(folder: Path, seconds: float) -> None:
    """The router's own CPU per request, V2 against `/invocations`, over a trivial upstream
    that answers both equally fast (so the upstream's speed does not change the router's)."""
    here = Path(__file__).resolve().parent / "trivial_upstream.py"
    port = free_port()
    upstream = start([sys.executable, str(here), str(port), "1"], port)
    router = serve_router(upstream, folder, "trivial", "exam")
    bodies = {
        "v2": write_body(folder, "columns", COLUMNS_REQUEST),
        "mlflow": write_body(folder, "mlflow", MLFLOW_REQUEST),
    }
    try:
        print("\n== the router's CPU per request over a trivial upstream", flush=True)
        for connections in CONCURRENCY:
            v2 = measure(router.url, f"/v2/models/{MODEL}/infer", bodies["v2"], connections,
                         seconds, router)  # fmt: skip
            mlflow = measure(router.url, "/invocations", bodies["mlflow"], connections, seconds,
                             router)  # fmt: skip
            print_row("router V2", connections, v2)
            print_row("router /invocations", connections, mlflow)
            print(f"{'':<34} c={connections:<3} V2/invocations router cpu "
                  f"{v2.cpu_ms / mlflow.cpu_ms:.2f}x", flush=True)  # fmt: skip
    finally:
        stop(router)
        stop(upstream)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=float, default=5.0, help="Seconds per wrk run.")
    parser.add_argument("--kinds", nargs="*",
                        default=["linear", "random_forest", "gradient_boosting"])  # fmt: skip
    parser.add_argument(
        "--router-only",
        action="store_true",
        help="Only the router's CPU per protocol over a trivial upstream.",
    )
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-v2-router-") as folder:
        bench_router_protocols(Path(folder), arguments.duration)
    if arguments.router_only:
        return
    if not MLSERVER.exists():
        sys.exit(MISSING)
    for kind in arguments.kinds:
        with tempfile.TemporaryDirectory(prefix=f"bench-v2-{kind}-") as folder:
            bench_kind(kind, Path(folder), arguments.duration)


if __name__ == "__main__":
    main()
