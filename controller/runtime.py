"""Model-server runtimes: `local` starts one child per version; `static` adopts given URLs."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from common.files import write_atomically
from common.settings import RegistrySettings
from common.supervision import (
    GUARDIAN,
    ChildFailed,
    ChildProcess,
    ProcessIdentity,
    child_environment,
    free_port,
    restart_delay,
    stop_groups,
    wait_until_healthy,
)
from controller.errors import ControllerError

log = logging.getLogger("controller")
START_SECONDS = 120.0
HANDOVER_S = 60.0
"""How long the model servers of a controller that died keep serving, waiting for its successor
to take them over (`Runtime.recover`), before its guardian stops them: longer than `up` takes
to start a controller again (its backoff reaches 30 s), so that a crash of the control plane
costs no request."""


@dataclass
class ManagedServer:
    """A model server this controller owns, and how often it has had to restart it.

    `child` is None for a server recovered after a controller restart: it is known by its
    identity (pid and start time) only.
    """

    version: str
    url: str
    port: int
    child: ChildProcess | None
    identity: ProcessIdentity | None
    restarts: int = 0
    next_restart_at: float = 0.0

    @property
    def running(self) -> bool:
        """Whether the server's process is alive."""
        if self.child is not None:
            return self.child.running
        return self.identity is not None and self.identity.alive()

    def stop(self) -> None:
        """Stop its process group (SIGTERM, then SIGKILL if it lingers)."""
        if self.child is not None:
            self.child.stop()
        elif self.identity is not None:
            stop_groups([self.identity])
            GUARDIAN.forget(self.identity)

    def describe(self) -> dict[str, object]:
        """Return what is saved of it in the state folder."""
        identity = self.identity
        return {
            "version": self.version, "url": self.url, "port": self.port,
            "pid": identity.pid if identity else None,
            "started": identity.started if identity else None,
        }  # fmt: skip


@dataclass
class Runtime:
    """Where model servers come from. `local` starts them; `static` only adopts URLs."""

    kind: str
    registry: RegistrySettings
    state: Path
    host: str = "127.0.0.1"
    servers: dict[str, ManagedServer] = field(default_factory=dict)
    """By URL: the servers this controller owns (local runtime)."""

    def __post_init__(self) -> None:
        """Have this controller's servers outlive it long enough for a successor to adopt."""
        if self.kind == "local":
            GUARDIAN.hand_over(HANDOVER_S)

    async def provide(self, version: str, url: str | None) -> str:
        """Return the URL of a healthy server for `version`: `url` if given, else a new child.

        Cancelled (a rollback superseded the change that asked for it), the new server is
        stopped before the cancellation goes on.
        """
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
        self.servers[server_url] = ManagedServer(version, server_url, port, child, child.identity)
        self._save()
        try:
            await wait_until_healthy(child, f"{server_url}/health", START_SECONDS)
        except ChildFailed as error:
            await self.retire(server_url)
            raise ControllerError(str(error)) from None
        except BaseException:
            await asyncio.shield(self.retire(server_url))
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

    def supervise(self, in_use: set[str]) -> None:
        """Restart owned servers in use that died, with backoff (call every second or so)."""
        now = time.monotonic()
        for server in list(self.servers.values()):
            if server.running or server.url not in in_use or now < server.next_restart_at:
                continue
            if server.child is None:
                server.child = self._child(server.version, server.port)
                log.warning("model server v%s (%s) is gone; restarting it", server.version,
                            server.url)  # fmt: skip
            else:
                log.warning("%s; restarting it", server.child.exit_description())
            server.next_restart_at = now + restart_delay(server.restarts)
            server.restarts += 1
            server.child.start()
            server.identity = server.child.identity
            self._save()

    def recover(self, in_use: set[str]) -> None:
        """Own again the servers a previous controller left that the split uses; stop the rest.

        Called at start-up. A controller that died left its servers serving, and its guardian
        waiting `HANDOVER_S` to stop them: that guardian is stopped first, then the servers the
        split uses are adopted (and announced to this controller's guardian), the rest
        stopped, so a controller killed mid-change leaves no server behind and costs no
        request. A recorded process is touched only if it is still the one recorded (pid and
        start time): a pid since reused by an unrelated process is left alone.
        """
        try:
            saved = json.loads(self._saved_path.read_text())
        except (OSError, ValueError):
            return
        if not isinstance(saved, dict):
            return
        guardian = saved.get("guardian")
        guardian = guardian if isinstance(guardian, dict) else {}
        pid, started = guardian.get("pid"), guardian.get("started")
        if isinstance(pid, int) and isinstance(started, int) and pid > 0:
            predecessor = ProcessIdentity(pid, started)
            if predecessor != GUARDIAN.identity():
                predecessor.signal_group(signal.SIGKILL)  # its own session: only itself
        servers = saved.get("servers")
        for item in servers if isinstance(servers, list) else []:
            pid, started = item.get("pid"), item.get("started")
            identity = ProcessIdentity(pid, started) if pid and started else None
            server = ManagedServer(
                str(item["version"]), str(item["url"]), int(item["port"]), None, identity
            )
            if not server.running:
                continue
            if server.url in in_use and server.identity is not None:
                self.servers[server.url] = server
                GUARDIAN.announce(server.identity)
            else:
                log.info("stopping %s (version %s): the split no longer uses it", server.url,
                         server.version)  # fmt: skip
                server.stop()
        self._save()

    @property
    def _saved_path(self) -> Path:
        return self.state / "model-servers.json"

    def _save(self) -> None:
        """Record the owned servers (url, version, identity), so a restart finds them."""
        guardian = GUARDIAN.identity()
        described = {
            "guardian": vars(guardian) if guardian is not None else None,
            "servers": [server.describe() for server in self.servers.values()],
        }
        write_atomically(self._saved_path, json.dumps(described, indent=1).encode())

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
