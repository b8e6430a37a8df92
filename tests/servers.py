"""Model servers as real child processes on free ports, for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import command_environment, free_port, wait_for_url


@dataclass
class ServerProcess:
    """A `mlcanary serve-model` child; `stop()` ends it and returns its exit code."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def wait_healthy(self, timeout: float = 120) -> float:
        """Wait until `/health` answers 200; return the seconds it took."""
        started = time.monotonic()
        wait_for_url(f"{self.url}/health", process=self.process, log=self.log_path, timeout=timeout)
        return time.monotonic() - started

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then wait; SIGKILL the group if it does not end in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait(timeout=timeout)


def start_model_server(
    model_uri: str,
    tracking_uri: str,
    log_path: Path,
    *,
    engine: str = "native",
    extra: tuple[str, ...] = (),
    environment: dict[str, str] | None = None,
) -> ServerProcess:
    """Start `mlcanary serve-model` for `model_uri` on a free port, in its own process group."""
    port = free_port()
    environment = command_environment(
        log_path.parent, MLFLOW_TRACKING_URI=tracking_uri, **(environment or {})
    )
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "mlcanary", "serve-model", model_uri),
                *("--port", str(port), "--engine", engine, *extra),
            ],
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return ServerProcess(process, f"http://127.0.0.1:{port}", log_path)
