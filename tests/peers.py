"""MLServer, the Open Inference Protocol peer, as a real child process for tests and benchmarks.

It runs from its own virtual environment (`make peers`, peers/mlserver/requirements.txt) on
free loopback ports, one model per folder of saved MLflow models, with its MLflow runtime (or
its scikit-learn runtime on a bare estimator file). Without that environment the tests that need
it are skipped, saying how to make it; `make test` always makes it first.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import free_port, wait_for_url
from tests.servers import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("MLCANARY_MLSERVER_VENV", ROOT / ".venv-mlserver"))
MLSERVER = VENV / "bin" / "mlserver"
MLFLOW_RUNTIME = "mlserver_mlflow.MLflowRuntime"
SKLEARN_RUNTIME = "mlserver_sklearn.SKLearnModel"


@dataclass(frozen=True)
class PeerModel:
    """One model MLServer serves: its name, the artifact's location, runtime and version."""

    name: str
    uri: Path
    version: str = "1"
    runtime: str = MLFLOW_RUNTIME


MISSING = f"MLServer is not installed at {MLSERVER}: run `make peers`"


def mlserver_or_skip() -> Path:
    """Return MLServer's command, or skip the test saying how to install it."""
    if not MLSERVER.exists():
        pytest.skip(MISSING)
    return MLSERVER


def start_mlserver(
    models: list[PeerModel], folder: Path, *, parallel_workers: int = 0
) -> ServerProcess:
    """Start MLServer on free loopback ports with `models`, in its own process group.

    `parallel_workers=0` answers in MLServer's main process (the tests: one process to start
    and stop); its default is 1 worker process (the benchmark measures that).
    """
    command = mlserver_or_skip()
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    settings = {
        "host": "127.0.0.1", "http_port": port, "grpc_port": free_port(),
        "metrics_port": free_port(), "parallel_workers": parallel_workers,
        "load_models_at_startup": True, "debug": False,
    }  # fmt: skip
    (folder / "settings.json").write_text(json.dumps(settings))
    for model in models:
        home = folder / "models" / model.name
        home.mkdir(parents=True, exist_ok=True)
        model_settings = {
            "name": model.name, "implementation": model.runtime,
            "parameters": {"uri": str(model.uri), "version": model.version},
        }  # fmt: skip
        (home / "model-settings.json").write_text(json.dumps(model_settings))
    log_path = folder / "mlserver.log"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [str(command), "start", str(folder)],
            env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    return MLServerProcess(process, f"http://127.0.0.1:{port}", log_path)


class MLServerProcess(ServerProcess):
    """MLServer: healthy once `/v2/health/ready` answers (every model loaded)."""

    def wait_healthy(self, timeout: float = 180) -> float:
        """Wait until every model is loaded; return the seconds it took."""
        started = time.monotonic()
        wait_for_url(f"{self.url}/v2/health/ready", process=self.process, log=self.log_path,
                     timeout=timeout)  # fmt: skip
        return time.monotonic() - started
