"""Model-server runtimes: `local` starts one child per version; `static` adopts given URLs."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from controller.errors import ControllerError
from controller.processes import ChildProcess, child_environment
from training.settings import RegistrySettings

log = logging.getLogger("controller")
START_SECONDS = 120.0
RESTART_BACKOFF = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)


def free_port(host: str) -> int:
    """Return a port on `host` that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@dataclass
class ManagedServer:
    """A model server this controller owns, and how often it has had to restart it.

    `child` is None for a server recovered after a controller restart: it is known by its pid.
    """

    version: str
    url: str
    port: int
    child: ChildProcess | None
    pid: int | None
    restarts: int = 0
    next_restart_at: float = 0.0

    @property
    def running(self) -> bool:
        """Whether the server's process is alive."""
        if self.child is not None:
            return self.child.running
        return self.pid is not None and _alive(self.pid)

    def stop(self) -> None:
        """Stop it: SIGTERM to its process group, SIGKILL if it lingers."""
        if self.child is not None:
            self.child.stop()
        elif self.pid is not None:
            _stop_group(self.pid)

    def describe(self) -> dict[str, object]:
        """Return what is saved of it in the state folder."""
        return {"version": self.version, "url": self.url, "port": self.port, "pid": self.pid}


@dataclass
class Runtime:
    """Where model servers come from. `local` starts them; `static` only adopts URLs."""

    kind: str
    registry: RegistrySettings
    state: Path
    host: str = "127.0.0.1"
    servers: dict[str, ManagedServer] = field(default_factory=dict)
    """By URL: the servers this controller owns (local runtime)."""

    async def provide(self, session: aiohttp.ClientSession, version: str, url: str | None) -> str:
        """Return the URL of a healthy server for `version`: `url` if given, else a new child."""
        if url is not None:
            return url.rstrip("/")
        if self.kind != "local":
            raise ControllerError(
                "the static runtime starts no model servers: give the server's url"
            )
        port = free_port(self.host)
        server_url = f"http://{self.host}:{port}"
        child = self._child(version, port)
        child.start()
        pid = child.process.pid if child.process else None
        self.servers[server_url] = ManagedServer(version, server_url, port, child, pid)
        self._save()
        try:
            await wait_healthy(session, child, server_url, START_SECONDS)
        except ControllerError:
            await self.retire(server_url)
            raise
        return server_url

    async def retire(self, url: str) -> None:
        """Stop the server at `url` if this controller owns it (others are left running)."""
        server = self.servers.pop(url, None)
        if server is not None:
            await asyncio.to_thread(server.stop)
            self._save()

    def owns(self, url: str) -> bool:
        """Tell whether this controller started the server at `url`."""
        return url in self.servers

    async def supervise(self, session: aiohttp.ClientSession, in_use: set[str]) -> None:
        """Restart owned servers in use that died, with backoff (call every second or so)."""
        now = time.monotonic()
        for server in list(self.servers.values()):
            if server.running or server.url not in in_use or now < server.next_restart_at:
                continue
            if server.child is None:
                server.child = self._child(server.version, server.port)
            log.warning("%s; restarting it", server.child.exit_description())
            delay = RESTART_BACKOFF[min(server.restarts, len(RESTART_BACKOFF) - 1)]
            server.restarts += 1
            server.next_restart_at = now + delay
            server.child.start()
            server.pid = server.child.process.pid if server.child.process else None
            self._save()

    def recover(self, in_use: set[str]) -> None:
        """Own again the servers a previous controller left that the split uses; stop the rest.

        Called at start-up, so a controller killed mid-change leaves no server behind.
        """
        try:
            saved = json.loads(self._saved_path.read_text())
        except (OSError, ValueError):
            return
        for item in saved if isinstance(saved, list) else []:
            server = ManagedServer(
                str(item["version"]), str(item["url"]), int(item["port"]), None, item.get("pid")
            )
            if not server.running:
                continue
            if server.url in in_use:
                self.servers[server.url] = server
            else:
                log.info("stopping %s (version %s): the split no longer uses it", server.url,
                         server.version)  # fmt: skip
                server.stop()
        self._save()

    @property
    def _saved_path(self) -> Path:
        return self.state / "model-servers.json"

    def _save(self) -> None:
        """Record the owned servers (url, version, pid), so a restarted controller finds them."""
        described = [server.describe() for server in self.servers.values()]
        temporary = self._saved_path.with_suffix(".tmp")
        temporary.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps(described, indent=1))
        os.replace(temporary, self._saved_path)

    async def stop_all(self) -> None:
        """Stop every owned server."""
        for url in list(self.servers):
            await self.retire(url)

    def _child(self, version: str, port: int) -> ChildProcess:
        uri = f"models:/{self.registry.model_name}/{version}"
        argv = [
            sys.executable, "-m", "mlcanary", "serve-model", uri,
            "--host", self.host, "--port", str(port),
        ]  # fmt: skip
        environment = child_environment({"MLFLOW_TRACKING_URI": self.registry.tracking_uri})
        environment.pop("MLFLOW_REGISTRY_URI", None)
        log_path = self.state / "logs" / f"model-server-v{version}-{port}.log"
        return ChildProcess(f"model server v{version} (:{port})", argv, log_path, environment)


async def wait_healthy(
    session: aiohttp.ClientSession, child: ChildProcess, url: str, within: float
) -> None:
    """Poll `url`/health until 200; raise ControllerError if the child dies or time runs out."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not child.running:
            raise ControllerError(f"{child.exit_description()}{_tail(child.log_path)}")
        try:
            async with session.get(f"{url}/health", timeout=aiohttp.ClientTimeout(total=2)) as r:
                if r.status == 200:
                    return
        except (aiohttp.ClientError, TimeoutError):
            pass
        await asyncio.sleep(0.2)
    raise ControllerError(f"{child.name} did not become healthy within {within:.0f} s")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_group(pid: int, grace: float = 10.0) -> None:
    """SIGTERM the process group led by `pid`, then SIGKILL it if still there after `grace`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.1)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        last = path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return (": " + " | ".join(line.strip() for line in last)) if last else ""
