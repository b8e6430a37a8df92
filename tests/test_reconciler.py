"""The reconciler and supervision for real: rollback over a starting deploy, restarts, strangers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.settings import RegistrySettings
from common.supervision import ProcessIdentity, process_table
from controller.runtime import Runtime
from tests.conftest import TrainedRegistry
from tests.gated_model import register_gated_model
from tests.helpers import wait_until
from tests.systems import (
    System,
    aliases_of,
    copied_registry,
    group_alive,
    owned_servers,
    running_system,
)
from tests.test_controller import Load

pytestmark = pytest.mark.slow  # real MLflow, model servers or whole systems

CLIENTS = 8


@pytest.fixture
def gated(trained_registry: TrainedRegistry, tmp_path: Path) -> tuple[RegistrySettings, Path, str]:
    """The session's registry (v1, v2) plus a model whose server cannot start while `hold` exists
    (created here: the test removes it to let the server start)."""
    folder = tmp_path / "registry"
    folder.mkdir()
    settings = copied_registry(trained_registry.settings, folder)
    hold = tmp_path / "hold"
    version = register_gated_model(settings, hold)
    hold.touch()
    return settings, hold, version


@pytest.fixture
def system(gated: tuple[RegistrySettings, Path, str], tmp_path: Path) -> Iterator[System]:
    with running_system(gated[0], tmp_path) as built:
        yield built


def _status(system: System) -> dict[str, Any]:
    code, status = system.admin("GET", "/api/status")
    assert code == 200, status
    return status


def _owned(system: System) -> list[dict[str, Any]]:
    return owned_servers(system.state)


def _starting(system: System, version: str) -> bool:
    pending = _status(system)["pending"]
    return any(
        change["action"] == "deploy" and change["stage"] == "starting a model server"
        for change in pending
    ) and any(server["version"] == version for server in _owned(system))


async def test_a_rollback_wins_over_a_deploy_still_starting_its_server(
    system: System, gated: tuple[RegistrySettings, Path, str]
) -> None:
    """Canary v2 at 50 % under load; a deploy of a slow model starts; a rollback comes: the
    canary gets no request sent after the rollback is answered, no request fails, the deploy's
    caller gets 409 and its server is stopped, and the audit log says what was superseded."""
    _, _, slow = gated
    code, answer = system.admin("POST", "/api/deploy", {"version": "2", "weight": 50})
    assert code == 200, answer
    loads = [Load(system.router_url) for _ in range(CLIENTS)]
    stop = asyncio.Event()
    running = [asyncio.create_task(load.run(stop)) for load in loads]
    deploying = asyncio.create_task(
        asyncio.to_thread(system.admin, "POST", "/api/deploy", {"version": slow, "weight": 50})
    )
    try:
        await asyncio.to_thread(wait_until, lambda: _starting(system, slow),
                                "the slow deploy starting its server", 120)  # fmt: skip
        (slow_server,) = [s for s in _owned(system) if s["version"] == slow]
        await asyncio.to_thread(
            wait_until, lambda: sum(len(load.answers) for load in loads) > 100, "traffic flowing"
        )
        asked_at = time.monotonic()
        code, rolled_back = await asyncio.to_thread(
            system.admin, "POST", "/api/rollback", {"reason": "canary looks wrong"}
        )
        answered_at = time.monotonic()
        assert code == 200, rolled_back
        deploy_code, deploy_answer = await deploying
        await asyncio.to_thread(wait_until, lambda: sum(
            1 for load in loads for a in load.answers if a[0] > answered_at + 0.5
        ) > 100, "traffic after the rollback")  # fmt: skip
    finally:
        stop.set()
        await asyncio.gather(*running)
    answers = [a for load in loads for a in load.answers]
    assert {a[2] for a in answers} == {200}, "a request failed"
    # In effect at once, whatever the clock: answered while the deploy is still held in its
    # server's start (it cannot load until the test lets it), and no request sent after the
    # answer reached the canary (the controller answers once every router follows the file).
    assert not any(a[3] == "canary" for a in answers if a[0] >= answered_at)
    assert any(a[3] == "canary" for a in answers if a[0] < asked_at)
    assert deploy_code == 409 and deploy_answer["error_code"] == "ABORTED", deploy_answer
    assert f"deploy of v{slow}" in deploy_answer["message"]
    assert rolled_back["after"]["canary"] == {**rolled_back["before"]["canary"], "weight": 0.0}
    assert rolled_back["after"]["canary"]["version"] == "2"
    assert rolled_back["superseded"] == [
        f"deploy of v{slow} (its model server, still starting, was stopped)"
    ]
    await asyncio.to_thread(wait_until, lambda: not group_alive(slow_server["pid"]),
                            "the superseded deploy's server stopped")  # fmt: skip
    assert _status(system)["pending"] == []
    assert aliases_of(system.settings) == {"champion": "1", "challenger": "2"}


def test_a_controller_killed_mid_reconcile_converges_on_restart(
    system: System, gated: tuple[RegistrySettings, Path, str]
) -> None:
    """A deploy asked with --detach (answered once recorded); the controller is killed while
    the deploy's server starts. Its servers outlive it (stable keeps serving); the restarted
    controller adopts stable's, stops the half-started one the split does not use, and makes
    the recorded deploy, so the split, the aliases and the servers converge on it."""
    _, hold, slow = gated
    asked = system.cli("deploy", slow, "--weight", "20", "--detach")
    assert asked.returncode == 0, asked.stderr
    assert "recorded" in asked.stdout
    wait_until(lambda: _starting(system, slow), "the deploy starting its server", 120)
    assert "pending  " in system.cli("status").stdout
    old_servers = _owned(system)
    os.killpg(system.processes[0].pid, signal.SIGKILL)
    system.processes[0].wait(timeout=10)
    assert all(group_alive(server["pid"]) for server in old_servers)  # handed over, not stopped
    hold.unlink()
    system.restart_controller()
    half_started = next(s for s in old_servers if s["version"] == slow)
    wait_until(lambda: not group_alive(half_started["pid"]), "the unused server stopped")
    wait_until(lambda: _status(system)["pending"] == [], "the recorded deploy made", 180)
    status = _status(system)
    assert status["stable"]["version"] == "1"
    assert status["canary"]["version"] == slow and status["canary"]["weight"] == 20
    assert all(seen["in_step"] for seen in status["routers"].values())
    assert aliases_of(system.settings) == {"champion": "1", "challenger": slow}
    owned = _owned(system)
    assert sorted(s["version"] for s in owned) == sorted(["1", slow])
    assert all(group_alive(s["pid"]) for s in owned)
    stable_pid = next(s["pid"] for s in old_servers if s["version"] == "1")
    assert stable_pid in {s["pid"] for s in owned}  # adopted, never restarted
    audit = [json.loads(line) for line in (system.state / "audit.jsonl").read_text().splitlines()]
    assert [record["action"] for record in audit] == ["deploy"]


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "600"], start_new_session=True)


def test_recovery_stops_only_processes_that_are_still_the_recorded_ones(tmp_path: Path) -> None:
    """Of the servers a dead controller recorded: one still running and unused is stopped; one
    in use is adopted; a recorded pid now held by another process (another start time), and an
    entry with no start time, are left alone."""
    ours, adopted, stranger, unknown = (_sleeper() for _ in range(4))
    try:

        def entry(
            process: subprocess.Popen[bytes], port: int, started: int | None
        ) -> dict[str, Any]:
            return {"version": "1", "url": f"http://127.0.0.1:{port}", "port": port,
                    "pid": process.pid, "started": started}  # fmt: skip

        def started(process: subprocess.Popen[bytes]) -> int:
            identity = ProcessIdentity.of(process.pid)
            assert identity is not None
            return identity.started

        recorded = [
            entry(ours, 1, started(ours)),
            entry(adopted, 2, started(adopted)),
            entry(stranger, 3, started(stranger) - 1),  # the recorded one had this pid before
            entry(unknown, 4, None),
        ]
        saved = {"guardian": None, "servers": recorded}
        (tmp_path / "model-servers.json").write_text(json.dumps(saved))
        runtime = Runtime("local", RegistrySettings.embedded_in(tmp_path), tmp_path)
        runtime.recover(in_use={"http://127.0.0.1:2"})
        ours.wait(timeout=30)
        assert stranger.poll() is None and unknown.poll() is None and adopted.poll() is None
        assert runtime.owns("http://127.0.0.1:2") and len(runtime.servers) == 1
        assert [s["pid"] for s in owned_servers(tmp_path)] == [adopted.pid]
    finally:
        for process in (ours, adopted, stranger, unknown):
            process.kill()
            process.wait()


PARENT = """
import sys, time
from pathlib import Path
from common.supervision import GUARDIAN, ChildProcess

GUARDIAN.hand_over(float(sys.argv[2]))
child = ChildProcess("sleeper", ["sh", "-c", "sleep 600 & sleep 600"], Path(sys.argv[1]))
child.start()
print(child.process.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("handover", [0.0, 2.0], ids=["at-once", "after-a-handover"])
def test_a_killed_parent_s_children_and_theirs_are_stopped(tmp_path: Path, handover: float) -> None:
    """A parent SIGKILLed: its guardian stops the child's whole process group; at once, or,
    for a parent that asked for a handover (the controller), once it is over (no successor
    took the group over)."""
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path / "child.log"), str(handover)],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        wait_until(lambda: _members(child) == 3, "the child and its two sleeps running")
        killed_at = time.monotonic()
        parent.kill()
        parent.wait()
        wait_until(lambda: _members(child) == 0, "the child's group stopped")
        assert time.monotonic() - killed_at >= handover  # not before the handover was over
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()


def _members(group: int) -> int:
    """Count the running (not zombie) processes of a process group."""
    return sum(1 for stat in process_table() if stat.pgid == group and stat.state != "Z")
