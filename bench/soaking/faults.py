"""The soak's faults: what breaks, when, for how long, and the windows the design allows.

Each fault acts on the running system from outside, as an operator's bad day would: a signal
to a process `up` started, a bad edit of the routing file, a full disk, a feed of labels that
stops. Every fault records when it began and ended. Two of them open a window in which the
design allows clients to fail:

- `router restart`: the router is stopped with SIGTERM and `up` starts it again after its
  backoff. It drains (answers every request it took), but while no router listens, a new
  connection is refused and an idle keep-alive connection it closed is lost to a request sent
  on it at that moment: one process, one port, as nginx without a second instance.
- a rollout of the model that fails a share of rows: the canary's own error answers reach the
  clients it is given until the judge rolls it back (`Truth.own_errors`); that is what the
  judge is for.

Nothing else may fail a request: a killed canary is failed over to stable, a killed controller,
a stopped MLflow server, a bad routing file and a full prediction-log disk all leave serving
untouched.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from common.supervision import ProcessIdentity, process_table

ROUTER_BACK_S = 120.0
"""How long the router may take to answer again after its restart, at most (else a failure)."""


@dataclass
class Happened:
    """One fault as it happened."""

    name: str
    began: float
    ended: float = 0.0
    note: str = ""


@dataclass
class System:
    """Where `up` runs: its process, state folder and URLs."""

    up_pid: int
    state: Path
    router_url: str
    controller_url: str
    predictions_mount: Path | None
    """The small filesystem the prediction log is on (a tmpfs), when one could be mounted."""

    def pids(self, *phrases: str) -> list[int]:
        """Pids of the processes `up` started whose command line holds every phrase."""
        parents = {stat.pid: stat.parent for stat in process_table()}  # read /proc once
        found = []
        for pid in parents:
            if pid == self.up_pid or not self._descends(pid, parents):
                continue
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if all(phrase.encode() in command for phrase in phrases):
                found.append(pid)
        return found

    @staticmethod
    def alive(pid: int) -> bool:
        """Whether `pid` runs (a zombie does not)."""
        identity = ProcessIdentity.of(pid)
        return identity is not None and identity.alive()

    def _descends(self, pid: int, parents: dict[int, int]) -> bool:
        """Whether `pid` was started (directly or not) by `up`, by the `parents` map."""
        while pid in parents and pid > 1:
            pid = parents[pid]
            if pid == self.up_pid:
                return True
        return False

    def routing(self) -> dict[str, object]:
        """The routing file as it is now (empty when it is not YAML)."""
        try:
            loaded = yaml.safe_load((self.state / "routing.yaml").read_text())
        except (OSError, yaml.YAMLError):
            return {}
        return loaded if isinstance(loaded, dict) else {}


@dataclass
class Faults:
    """The faults done to one system, and what each did."""

    system: System
    happened: list[Happened] = field(default_factory=list)
    rollout_running: Callable[[], Awaitable[bool]] | None = None
    labels_paused: asyncio.Event | None = None

    def windows(self) -> list[tuple[float, float, str]]:
        """The windows in which the design allows requests to fail: (start, end, why)."""
        return [
            (event.began, event.ended, "router restart")
            for event in self.happened
            if event.name == "router restart"
        ]

    async def _timed(self, name: str, act: Callable[[Happened], Awaitable[None]]) -> None:
        event = Happened(name, time.time())
        self.happened.append(event)
        try:
            await act(event)
        finally:
            event.ended = time.time()

    async def _rollout_under_way(self, within_s: float) -> None:
        """Wait until a rollout runs (for `within_s` at most)."""
        deadline = time.monotonic() + within_s
        while self.rollout_running and not await self.rollout_running():
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(0.5)

    async def kill_canary(self, within_s: float = 120.0) -> None:
        """SIGKILL the canary's model server in the middle of a rollout (waiting for one up to
        `within_s`): the router fails over to stable, the controller starts it again."""

        async def act(event: Happened) -> None:
            await self._rollout_under_way(within_s)
            event.began = time.time()
            canary = self.system.routing().get("canary")
            url = str(canary.get("url", "")) if isinstance(canary, dict) else ""
            port = url.rsplit(":", 1)[-1].strip("/")
            pids = self.system.pids("serve-model", f"--port {port} ") if port.isdigit() else []
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            event.note = f"canary at {url or 'none'}: killed {pids}"

        await self._timed("canary killed", act)

    async def restart_router(self, answering: Callable[[], Awaitable[bool]]) -> None:
        """SIGTERM the router; `up` starts it again. The window lasts until it answers."""

        async def act(event: Happened) -> None:
            pids = self.system.pids("mlcanary router --config")
            for pid in pids:
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + ROUTER_BACK_S
            await asyncio.sleep(0.2)
            while not await answering():
                if time.monotonic() > deadline:
                    event.note = f"not answering {ROUTER_BACK_S:.0f} s after SIGTERM"
                    return
                await asyncio.sleep(0.1)
            event.note = f"stopped {pids}; answering again"

        await self._timed("router restart", act)

    async def kill_controller(self, within_s: float = 120.0) -> None:
        """SIGKILL the controller in the middle of a rollout (waiting for one up to
        `within_s`); `up` starts it again and the rollout goes on."""

        async def act(event: Happened) -> None:
            await self._rollout_under_way(within_s)
            pids = self.system.pids("mlcanary controller --config")
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            event.began = time.time()
            event.note = f"killed {pids}"

        await self._timed("controller killed", act)

    async def bad_routing_edit(self, lasting_s: float) -> None:
        """Write a routing file that is not YAML; put the last one back after `lasting_s`
        unless the controller wrote a new one meanwhile."""

        async def act(event: Happened) -> None:
            path = self.system.state / "routing.yaml"
            before = path.read_bytes()
            bad = b"stable: [unclosed\n  weight: {{\n"
            path.write_bytes(bad)
            await asyncio.sleep(lasting_s)
            if path.read_bytes() == bad:
                path.write_bytes(before)
                event.note = "put back"
            else:
                event.note = "replaced by the controller"

        await self._timed("invalid routing file", act)

    async def stop_mlflow(self, lasting_s: float) -> None:
        """SIGSTOP the MLflow server (it hangs: connections open, no answer), SIGCONT after."""

        async def act(event: Happened) -> None:
            pids = self.system.pids("mlflow server --backend-store-uri")
            groups = {os.getpgid(pid) for pid in pids}
            for group in groups:
                os.killpg(group, signal.SIGSTOP)
            try:
                await asyncio.sleep(lasting_s)
            finally:
                for group in groups:
                    os.killpg(group, signal.SIGCONT)
            event.note = f"process groups {sorted(groups)}"

        await self._timed("MLflow stopped", act)

    async def fill_disk(self, lasting_s: float) -> None:
        """Fill the prediction log's filesystem with one file; remove it after `lasting_s`."""

        async def act(event: Happened) -> None:
            mount = self.system.predictions_mount
            if mount is None:
                event.note = "skipped: no filesystem of its own could be mounted"
                return
            ballast = mount / "ballast"
            with ballast.open("wb", buffering=0) as handle:  # unbuffered: nothing left to flush
                try:
                    while True:
                        handle.write(b"\0" * (1 << 20))
                except OSError as error:
                    event.note = f"full: {error.strerror}"
            try:
                await asyncio.sleep(lasting_s)
            finally:
                ballast.unlink()

        await self._timed("prediction log disk full", act)

    async def pause_labels(self, lasting_s: float) -> None:
        """Hold every label back for `lasting_s`, then let the pile go at once."""

        async def act(event: Happened) -> None:
            assert self.labels_paused is not None
            self.labels_paused.set()
            try:
                await asyncio.sleep(lasting_s)
            finally:
                self.labels_paused.clear()
            event.note = "then a burst"

        await self._timed("labels paused", act)
