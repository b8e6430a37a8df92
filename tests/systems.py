"""A controller and a router as real child processes over one state folder, for tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.settings import RegistrySettings
from contracts.routing import RoutingConfig, write_routing_file
from tests.helpers import command_environment, free_port, registry_snapshot, run_mlcanary


def copied_registry(source: RegistrySettings, folder: Path) -> RegistrySettings:
    """A registry of the test's own: a copy of `source`'s database (artifacts shared, read-only)."""
    source_db = Path(source.tracking_uri.removeprefix("sqlite:///"))
    shutil.copy(source_db, folder / "mlflow.db")
    return RegistrySettings(
        tracking_uri=f"sqlite:///{folder / 'mlflow.db'}",
        artifact_root=source.artifact_root,
        model_name=source.model_name,
    )


def owned_servers(state: Path) -> list[dict[str, Any]]:
    """The model servers the controller over `state` records as its own (pid, url, version)."""
    path = state / "model-servers.json"
    servers: list[dict[str, Any]] = json.loads(path.read_text())["servers"] if path.exists() else []
    return servers


def aliases_of(settings: RegistrySettings) -> dict[str, str]:
    """Where the model's aliases point, alias -> version."""
    described, _ = registry_snapshot(settings)
    return {alias: version for version, aliases in described for alias in aliases}


def call_json(
    url: str, method: str = "GET", body: Any = None, token: str | None = None
) -> tuple[int, Any]:
    """Send a JSON request; return the status and the JSON answer, errors included."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


@dataclass
class System:
    """A controller and a router as child processes, over one state folder."""

    state: Path
    settings: RegistrySettings
    controller_url: str
    router_url: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    controller_argv: list[str] = field(default_factory=list)
    router_argv: list[str] = field(default_factory=list)

    def restart_controller(self) -> None:
        """Start the controller again over the same state (after it was killed)."""
        log = self.state / "controller.log"
        self.processes[0] = start_mlcanary(self.controller_argv, self.state, log, self.settings)
        wait_for(f"{self.controller_url}/ping", self.processes[0], log)

    def restart_controller_gracefully(self) -> None:
        """Stop the controller with SIGTERM, then start it again over the same state."""
        self.processes[0].send_signal(signal.SIGTERM)
        self.processes[0].wait(timeout=60)
        self.restart_controller()

    def restart_router(self) -> None:
        """Start the router again over the same state and port (after it was stopped)."""
        log = self.state / "router.log"
        self.processes[1] = start_mlcanary(self.router_argv, self.state, log, self.settings)
        wait_for(f"{self.router_url}/ping", self.processes[1], log)

    @property
    def token(self) -> str:
        return (self.state / "admin-token").read_text().strip()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_mlcanary(
            *args, "--controller", self.controller_url, state=self.state,
            MLFLOW_TRACKING_URI=self.settings.tracking_uri,
        )  # fmt: skip

    def admin(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        return call_json(self.controller_url + path, method, body, token or self.token)


def start_mlcanary(
    argv: list[str], state: Path, log: Path, settings: RegistrySettings
) -> subprocess.Popen[bytes]:
    environment = command_environment(state, MLFLOW_TRACKING_URI=settings.tracking_uri)
    with log.open("ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "mlcanary", *argv],
            env=environment, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def wait_for(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{url} exited: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} not up in {timeout} s: {log.read_text()[-3000:]}")


def group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextmanager
def running_system(
    settings: RegistrySettings,
    tmp_path: Path,
    stable_version: str = "1",
    controller_options: tuple[str, ...] = (),
    router_options: tuple[str, ...] = (),
    routing: RoutingConfig | None = None,
) -> Iterator[System]:
    """Controller (the given stable, no canary, local runtime) and a router following its file,
    each with the options given added. With `routing`, the file is written first (the
    controller adopts the servers it names)."""
    state = tmp_path / "state"
    state.mkdir()
    if routing is not None:
        write_routing_file(state / "routing.yaml", routing)
    controller_port, router_port = free_port(), free_port()
    router_url = f"http://127.0.0.1:{router_port}"
    routing = state / "routing.yaml"
    controller_log, router_log = state / "controller.log", state / "router.log"
    controller_argv = [
        "controller", "--config", str(routing), "--port", str(controller_port),
        "--router", router_url, "--stable-version", stable_version, *controller_options,
    ]  # fmt: skip
    controller = start_mlcanary(controller_argv, state, controller_log, settings)
    built = System(state, settings, f"http://127.0.0.1:{controller_port}", router_url)
    built.controller_argv = controller_argv
    built.processes.append(controller)
    try:
        wait_for(f"{built.controller_url}/ping", controller, controller_log)
        built.router_argv = [
            "router", "--config", str(routing), "--port", str(router_port),
            "--controller", built.controller_url, *router_options,
        ]  # fmt: skip
        built.processes.append(start_mlcanary(built.router_argv, state, router_log, settings))
        wait_for(f"{router_url}/ping", built.processes[1], router_log)
        yield built
    finally:
        for process in reversed(built.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    left = [p.pid for p in built.processes if group_alive(p.pid)]
    assert not left, f"process groups left behind: {left}"
    recorded = owned_servers(state)
    assert not [s["pid"] for s in recorded if group_alive(s["pid"])], "model servers left behind"
