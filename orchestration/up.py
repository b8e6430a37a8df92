"""`mlcanary up`: the whole system on one machine: MLflow, first models, controller, router."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from common.settings import RegistrySettings
from common.supervision import (
    ChildFailed,
    ChildProcess,
    child_environment,
    ensure_port_free,
    next_restart,
    wait_until_healthy,
)
from controller.token import TOKEN_FILE, write_fresh_token
from training.pipelines import ModelKind
from training.registry import CHALLENGER, CHAMPION, connect, versions_of
from training.train import TrainOptions, TrainResult, train_and_register

STABLE_KIND = ModelKind.random_forest
"""What the original app served; registered first, as the champion."""
CANDIDATE_KIND = ModelKind.linear
"""The candidate worth a canary: it scores better on held-out rows."""
MLFLOW_START_SECONDS = 60.0
CONTROLLER_START_SECONDS = 180.0
"""The controller starts both model servers (each imports MLflow and loads its model) first."""
ROUTER_START_SECONDS = 30.0
log = logging.getLogger("controller")


@dataclass(frozen=True)
class UpOptions:
    """Where the local system keeps its state and listens."""

    state: Path
    mlflow_host: str = "127.0.0.1"
    mlflow_port: int = 5000
    host: str = "127.0.0.1"
    """Address of the router and the controller."""
    router_port: int = 8000
    controller_port: int = 8001
    canary_percent: float = 10.0
    stable_version: str = "latest"
    notify: tuple[str, ...] = ()
    """Where the controller sends every change and rollout event."""
    notify_secret_file: Path | None = None
    """The file holding the key webhook notifications are signed with."""


@dataclass
class LocalSystem:
    """The children started by `up`, stopped in reverse order."""

    children: list[ChildProcess] = field(default_factory=list)
    trained: list[TrainResult] = field(default_factory=list)
    urls: dict[str, str] = field(default_factory=dict)
    restartable: set[str] = field(default_factory=set)
    """Names of children restarted with backoff when they die (the rest end `up`)."""
    restarts: dict[str, int] = field(default_factory=dict)

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
    ensure_port_free(options.host, options.controller_port, "the controller")
    ensure_port_free(options.host, options.router_port, "the router")
    system.trained = bootstrap_registry(settings, progress)
    if settings.embedded:
        progress("Starting the MLflow server")
        server = mlflow_server(settings, options)
        system.children.append(server)
        server.start()
        url = f"http://{options.mlflow_host}:{options.mlflow_port}"
        _wait_until_healthy(server, f"{url}/health", MLFLOW_START_SECONDS)
        system.urls["MLflow UI"] = url
    else:
        system.urls["MLflow"] = settings.tracking_uri
    write_fresh_token(options.state / TOKEN_FILE)
    progress("Starting the controller and the model servers")
    controller_url = f"http://{options.host}:{options.controller_port}"
    _start_restartable(system, controller_process(settings, options), controller_url,
                       CONTROLLER_START_SECONDS)  # fmt: skip
    progress("Starting the router")
    router_url = f"http://{options.host}:{options.router_port}"
    _start_restartable(system, router_process(settings, options), router_url, ROUTER_START_SECONDS)
    system.urls["router (predictions)"] = router_url
    system.urls["API docs"] = f"{router_url}/docs"
    system.urls["controller (admin API)"] = controller_url
    system.urls["admin token"] = str(options.state / TOKEN_FILE)
    # The operator page first: what most people open.
    system.urls = {"operator page": f"{controller_url}/", **system.urls}


def _wait_until_healthy(child: ChildProcess, url: str, within: float) -> None:
    asyncio.run(wait_until_healthy(child, url, within))


def _start_restartable(system: LocalSystem, child: ChildProcess, url: str, within: float) -> None:
    """Start a child `up` restarts when it dies; wait until its /ping answers."""
    system.children.append(child)
    system.restartable.add(child.name)
    child.start()
    _wait_until_healthy(child, f"{url}/ping", within)


def _mlcanary(*args: str) -> list[str]:
    return [sys.executable, "-m", "mlcanary", *args]


def controller_process(settings: RegistrySettings, options: UpOptions) -> ChildProcess:
    """Describe the controller: it starts the model servers and writes the routing file."""
    argv = _mlcanary(
        "controller", "--config", str(options.state / "routing.yaml"),
        "--host", options.host, "--port", str(options.controller_port),
        "--router", f"http://{options.host}:{options.router_port}",
        "--stable-version", options.stable_version, "--canary-version", "challenger",
        "--canary-weight", str(options.canary_percent),
        *(argument for url in options.notify for argument in ("--notify", url)),
    )  # fmt: skip
    if options.notify_secret_file is not None:
        argv += ["--notify-secret-file", str(options.notify_secret_file)]
    environment = child_environment(
        {"MLFLOW_TRACKING_URI": served_registry(settings, options),
         "MLCANARY_HOME": str(options.state)}
    )  # fmt: skip
    environment.pop("MLFLOW_REGISTRY_URI", None)
    return ChildProcess("controller", argv, options.state / "logs" / "controller.log", environment)


def served_registry(settings: RegistrySettings, options: UpOptions) -> str:
    """Name the registry the running system talks to: the MLflow server over the embedded one.

    Over MLflow's REST API the router, the controller and every model server it starts read
    versions without opening the sqlite store themselves, which costs each process SQLAlchemy
    and alembic (about 54 MiB of a model server's memory) and contends for the file's lock.
    """
    if settings.embedded:
        return f"http://{options.mlflow_host}:{options.mlflow_port}"
    return settings.tracking_uri


def router_process(settings: RegistrySettings, options: UpOptions) -> ChildProcess:
    """Describe the router, following the controller's routing file."""
    argv = _mlcanary(
        "router", "--config", str(options.state / "routing.yaml"),
        "--host", options.host, "--port", str(options.router_port),
    )  # fmt: skip
    environment = child_environment(
        {
            "MLCANARY_CONTROLLER_URL": f"http://{options.host}:{options.controller_port}",
            # The router reads versions over MLflow's REST API for /model-info.
            "MLFLOW_TRACKING_URI": served_registry(settings, options),
        }
    )
    return ChildProcess("router", argv, options.state / "logs" / "router.log", environment)


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


def run_until_stopped(
    system: LocalSystem, report: Callable[[str], None], poll_seconds: float = 0.5
) -> None:
    """Restart a dying router or controller; end on any other death, or on Ctrl-C.

    A child that ran steadily is started again at once, one in a crash loop with backoff
    (`common.supervision.next_restart`).
    """
    idle = threading.Event()
    due: dict[str, float] = {}
    while True:
        dead = system.first_dead_child()
        if dead is not None:
            if dead.name not in system.restartable:
                raise ChildFailed(dead.exit_description())
            now = time.monotonic()
            if dead.name not in due:
                restarts, delay = next_restart(
                    system.restarts.get(dead.name, 0), now - dead.started_at
                )
                system.restarts[dead.name] = restarts
                report(f"{dead.exit_description()}; restarting it in {delay:g} s")
                due[dead.name] = now + delay
            elif now >= due[dead.name]:
                del due[dead.name]
                dead.start()
        idle.wait(poll_seconds)
