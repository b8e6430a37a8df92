"""`mlcanary up`: bring up a local system: the registry, its first models and the MLflow UI."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from controller.errors import ControllerError
from controller.processes import ChildProcess, ensure_port_free, wait_until_healthy
from training.pipelines import ModelKind
from training.registry import CHALLENGER, CHAMPION, connect, versions_of
from training.settings import RegistrySettings
from training.train import TrainOptions, TrainResult, train_and_register

STABLE_KIND = ModelKind.random_forest
"""What the original app served; registered first, as the champion."""
CANDIDATE_KIND = ModelKind.linear
"""The candidate worth a canary: it scores better on held-out rows."""
MLFLOW_START_SECONDS = 60.0


@dataclass(frozen=True)
class UpOptions:
    """Where the local system keeps its state and listens."""

    state: Path
    mlflow_host: str = "127.0.0.1"
    mlflow_port: int = 5000


@dataclass
class LocalSystem:
    """The children started by `up`, stopped in reverse order."""

    children: list[ChildProcess] = field(default_factory=list)
    trained: list[TrainResult] = field(default_factory=list)
    urls: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        """Stop every child, newest first."""
        for child in reversed(self.children):
            child.stop()

    def first_dead_child(self) -> ChildProcess | None:
        """Return a child that has exited, if any."""
        return next((child for child in self.children if not child.running), None)


def bootstrap_registry(
    settings: RegistrySettings, progress: Callable[[str], None]
) -> list[TrainResult]:
    """Train and register a champion and a challenger when the registry has no versions."""
    if versions_of(connect(settings), settings.model_name):
        return []
    return [
        train_and_register(TrainOptions(kind=STABLE_KIND, alias=CHAMPION), settings, progress),
        train_and_register(TrainOptions(kind=CANDIDATE_KIND, alias=CHALLENGER), settings, progress),
    ]


def mlflow_server(settings: RegistrySettings, options: UpOptions) -> ChildProcess:
    """Describe an MLflow tracking server with UI over the embedded registry."""
    assert settings.artifact_root is not None  # noqa: S101 (only for the embedded registry)
    argv = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", settings.tracking_uri,
        "--default-artifact-root", settings.artifact_root,
        "--host", options.mlflow_host,
        "--port", str(options.mlflow_port),
        "--workers", "1",
    ]  # fmt: skip
    return ChildProcess("mlflow", argv, options.state / "logs" / "mlflow.log")


def start_system(
    options: UpOptions,
    settings: RegistrySettings,
    system: LocalSystem,
    progress: Callable[[str], None],
) -> None:
    """Train into an empty registry, then start the MLflow UI, recording each child in `system`.

    The caller stops `system` whatever happens, so a failure half-way leaves nothing running.
    """
    if settings.embedded:
        ensure_port_free(options.mlflow_host, options.mlflow_port, "the MLflow server")
    system.trained = bootstrap_registry(settings, progress)
    if not settings.embedded:
        system.urls["MLflow"] = settings.tracking_uri
        return
    progress("Starting the MLflow server")
    server = mlflow_server(settings, options)
    system.children.append(server)
    server.start()
    url = f"http://{options.mlflow_host}:{options.mlflow_port}"
    wait_until_healthy(server, f"{url}/health", MLFLOW_START_SECONDS)
    system.urls["MLflow UI"] = url


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C inside the block, so both take the same clean-up path."""

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def signals_ignored() -> Iterator[None]:
    """Ignore Ctrl-C and SIGTERM inside the block, so a second one cannot cut clean-up short."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_until_stopped(system: LocalSystem, poll_seconds: float = 0.5) -> None:
    """Block until a child dies (then raise ControllerError); Ctrl-C ends it from outside."""
    idle = threading.Event()
    while True:
        dead = system.first_dead_child()
        if dead is not None:
            raise ControllerError(dead.exit_description())
        idle.wait(poll_seconds)
