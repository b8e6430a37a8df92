"""The controller for real: its own registry copy, model servers it starts, a router process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from mlflow import MlflowClient

from common.settings import RegistrySettings
from controller.checks import incompatibilities
from tests.conftest import TrainedRegistry
from tests.helpers import wait_for_url
from tests.helpers import wait_until as wait_until_sync
from tests.routers import wait_until
from tests.systems import (
    System,
    aliases_of,
    call_json,
    copied_registry,
    group_alive,
    owned_servers,
    running_system,
)
from training.pipelines import ModelKind
from training.train import TrainOptions, train_and_register

pytestmark = pytest.mark.slow  # real MLflow, model servers or whole systems

ROW = {"hours_studied": 6.5, "sleep_hours": 7.0, "attendance_percent": 90.0, "previous_scores": 85}
BODY = json.dumps({"dataframe_records": [ROW]}).encode()
ADMIN_ROUTES = [
    ("GET", "/api/status"),
    ("GET", "/api/versions"),
    ("POST", "/api/deploy"),
    ("POST", "/api/weight"),
    ("POST", "/api/promote"),
    ("POST", "/api/rollback"),
    ("GET", "/api/rollout"),
    ("POST", "/api/rollout"),
    ("POST", "/api/rollout/abort"),
    ("POST", "/api/rollout/pause"),
    ("POST", "/api/rollout/resume"),
    ("POST", "/api/rollout/confirm"),
]


@pytest.fixture(scope="module")
def three_versions(
    trained_registry: TrainedRegistry, tmp_path_factory: pytest.TempPathFactory
) -> RegistrySettings:
    """A copy of the session registry (v1 linear, v2 forest) plus v3 (gradient boosting)."""
    folder = tmp_path_factory.mktemp("controller-registry")
    settings = copied_registry(trained_registry.settings, folder)
    train_and_register(TrainOptions(kind=ModelKind.gradient_boosting, alias=""), settings)
    return settings


@pytest.fixture
def system(three_versions: RegistrySettings, tmp_path: Path) -> Iterator[System]:
    """Controller (stable v1, no canary, local runtime) and a router following its file."""
    with running_system(three_versions, tmp_path) as built:
        yield built


@dataclass
class Load:
    """A client sending requests through the router the whole time, one after another."""

    url: str
    answers: list[tuple[float, float, int, str, str]] = field(default_factory=list)
    """(sent at, answered at, status, variant, version)."""

    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                sent = time.monotonic()
                async with session.post(
                    f"{self.url}/invocations", data=BODY,
                    headers={"Content-Type": "application/json"},
                ) as answer:  # fmt: skip
                    await answer.read()
                    self.answers.append(
                        (sent, time.monotonic(), answer.status,
                         answer.headers.get("X-Model-Variant", ""),
                         answer.headers.get("X-Model-Version", ""))
                    )  # fmt: skip
                await asyncio.sleep(0.005)


async def test_the_original_workflow_end_to_end(system: System) -> None:
    """Deploy v2, 5 -> 100 %, promote; deploy v3, roll back: no request fails throughout."""
    load = Load(system.router_url)
    stop = asyncio.Event()
    running = asyncio.create_task(load.run(stop))

    async def cli(*args: str) -> subprocess.CompletedProcess[str]:
        done = await asyncio.to_thread(system.cli, *args)
        assert done.returncode == 0, done.stderr + done.stdout
        return done

    def answered_after(moment: float, count: int = 5) -> Callable[[], bool]:
        return lambda: sum(a[0] >= moment for a in load.answers) >= count

    def stopped(url: str) -> bool:
        try:
            urllib.request.urlopen(f"{url}/ping", timeout=2).close()
        except OSError:
            return True
        return False

    try:
        await wait_until(answered_after(0.0), "traffic flowing", within=60)
        await cli("deploy", "2", "--weight", "5", "--reason", "new forest")
        assert aliases_of(system.settings) == {"champion": "1", "challenger": "2"}
        for percent in ("10", "25", "50", "100"):
            await cli("weight", percent, "--reason", f"step to {percent}")
            await wait_until(answered_after(time.monotonic()), f"traffic at {percent}%", 60)
        old_stable = json.loads(system.cli("status", "--json").stdout)["stable"]["url"]
        await cli("promote", "--reason", "looks good")
        promoted_at = time.monotonic()
        assert aliases_of(system.settings) == {"champion": "2"}
        old_stopped = partial(asyncio.to_thread, stopped, old_stable)
        await wait_until(old_stopped, "the old stable drained and stopped", within=60)
        deploying_at = time.monotonic()
        await cli("deploy", "3", "--weight", "50", "--reason", "try boosting")
        canary_answering = lambda: any(a[4] == "3" for a in load.answers)  # noqa: E731
        await wait_until(canary_answering, "the canary v3 answering", within=60)
        await cli("rollback", "--reason", "not convinced")
        rolled_back_at = time.monotonic()
        await wait_until(answered_after(rolled_back_at, 20), "traffic after the rollback", 60)
    finally:
        stop.set()
        await running
    statuses = {
        status for *_, status, _, _ in [(a[0], a[1], a[2], a[3], a[4]) for a in load.answers]
    }
    assert len(load.answers) > 50
    assert {a[2] for a in load.answers} == {200}, statuses
    after_promote = [a for a in load.answers if promoted_at <= a[0] < deploying_at]
    assert after_promote and {a[4] for a in after_promote if a[3] == "stable"} == {"2"}
    after_rollback = [a for a in load.answers if a[0] >= rolled_back_at]
    assert after_rollback and {a[3] for a in after_rollback} == {"stable"}
    assert aliases_of(system.settings) == {"champion": "2", "challenger": "3"}
    status = json.loads(system.cli("status", "--json").stdout)
    assert status["stable"]["version"] == "2"
    assert status["canary"]["version"] == "3" and status["canary"]["weight"] == 0
    assert all(seen["in_step"] for seen in status["routers"].values())
    audit = [json.loads(line) for line in (system.state / "audit.jsonl").read_text().splitlines()]
    # The controller cuts prediction buckets itself as stable versions answer: not the operator's.
    audit = [record for record in audit if record["action"] != "prediction-buckets"]
    assert [record["action"] for record in audit] == [
        "deploy", "weight", "weight", "weight", "weight", "promote", "deploy", "rollback",
    ]  # fmt: skip
    assert audit[-1]["reason"] == "not convinced"
    assert (
        audit[-1]["before"]["canary"]["weight"] == 50
        and audit[-1]["after"]["canary"]["weight"] == 0
    )


def test_every_admin_route_needs_the_token_in_the_header(system: System) -> None:
    """No token: 401; a wrong one: 403; the right one in the query string: 401."""
    for method, path in ADMIN_ROUTES:
        request = urllib.request.Request(
            system.controller_url + path, method=method, data=b"{}" if method == "POST" else None
        )
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(request, timeout=10)
        with missing.value:
            assert missing.value.code == 401
            assert json.loads(missing.value.read())["error_code"] == "UNAUTHENTICATED"
        code, body = system.admin(method, path, {} if method == "POST" else None, token="wrong")  # noqa: S106
        assert (code, body["error_code"]) == (403, "PERMISSION_DENIED")
        query = urllib.request.Request(
            f"{system.controller_url}{path}?token={system.token}", method=method,
            data=b"{}" if method == "POST" else None,
        )  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as in_query:
            urllib.request.urlopen(query, timeout=10)
        with in_query.value:
            assert in_query.value.code == 401
    assert system.token not in (system.state / "controller.log").read_text()
    assert oct((system.state / "admin-token").stat().st_mode & 0o777) == "0o600"


def test_bad_changes_are_400s_naming_the_field_and_change_nothing(system: System) -> None:
    before = (system.state / "routing.yaml").read_bytes()
    cases = [
        ("/api/weight", {"weight": 140}, "weight"),
        ("/api/weight", {"weight": 10}, "no canary"),
        ("/api/weight", {"weigth": 10}, "weigth"),
        ("/api/deploy", {"version": "abc"}, "version"),
        ("/api/deploy", {"version": "99"}, "no version 99"),
        ("/api/deploy", {"version": "1"}, "already stable"),
        ("/api/promote", {}, "no canary"),
        ("/api/deploy", {"version": "3", "url": "not a url"}, "url"),
        ("/api/rollback", {}, "no canary"),
    ]
    for path, body, named in cases:
        code, answer = system.admin("POST", path, body)
        assert code == 400, (path, body, answer)
        assert answer["error_code"] == "INVALID_PARAMETER_VALUE"
        assert named in answer["message"], answer
    request = urllib.request.Request(
        system.controller_url + "/api/weight", data=b"{not json", method="POST",
        headers={"Authorization": f"Bearer {system.token}"},
    )  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as broken:
        urllib.request.urlopen(request, timeout=10)
    with broken.value:
        assert broken.value.code == 400
    assert (system.state / "routing.yaml").read_bytes() == before
    assert not (system.state / "audit.jsonl").exists()


def test_a_failing_step_undoes_the_change(system: System) -> None:
    """Disk full for the audit log, a locked registry, a router that never confirms: each time
    the routing file and the aliases are as before, and the error says what happened."""
    code, _ = system.admin("POST", "/api/deploy", {"version": "2", "weight": 10})
    assert code == 200
    routing = (system.state / "routing.yaml").read_bytes()
    aliases = aliases_of(system.settings)
    audit = system.state / "audit.jsonl"
    kept = audit.read_bytes()
    audit.unlink()
    audit.symlink_to("/dev/full")
    code, answer = system.admin("POST", "/api/weight", {"weight": 30})
    assert code == 503, answer
    assert "audit log" in answer["message"] and "previous routing file is back" in answer["message"]
    assert (system.state / "routing.yaml").read_bytes() == routing
    assert aliases_of(system.settings) == aliases
    audit.unlink()
    audit.write_bytes(kept)
    database = system.settings.tracking_uri.removeprefix("sqlite:///")
    with sqlite3.connect(database, isolation_level=None) as holder:
        holder.execute("BEGIN EXCLUSIVE")  # the registry can be read by no one until we let go
        try:
            code, answer = system.admin("POST", "/api/weight", {"weight": 40})
        finally:
            holder.execute("ROLLBACK")
    assert code == 503, answer
    assert "registry" in answer["message"] and "previous routing file is back" in answer["message"]
    assert (system.state / "routing.yaml").read_bytes() == routing
    assert aliases_of(system.settings) == aliases
    system.processes[-1].send_signal(signal.SIGSTOP)  # the router: alive, but it reads nothing
    try:
        code, answer = system.admin("POST", "/api/promote", {})
    finally:
        system.processes[-1].send_signal(signal.SIGCONT)
    assert code == 503, answer
    assert "did not load" in answer["message"]
    assert (system.state / "routing.yaml").read_bytes() == routing
    assert aliases_of(system.settings) == aliases
    assert audit.read_bytes() == kept


def test_the_original_admin_paths_work_on_the_router_port(system: System) -> None:
    """/canary-status, /update-model, /canary-probability, /accept-next-model, /health shapes."""
    router, token = system.router_url, system.token
    code, status = call_json(f"{router}/canary-status")
    assert code == 200 and status["models_identical"] is True
    assert status["current_model"]["uri"] == "models:/StudentExamPredictor/1"
    update = {"model_name": "StudentExamPredictor", "model_version": "2"}
    assert call_json(f"{router}/update-model", "POST", update)[0] == 401
    assert call_json(f"{router}/update-model", "POST", update, token="wrong")[0] == 403  # noqa: S106
    code, refused = call_json(
        f"{router}/update-model", "POST", {**update, "model_name": "x"}, token
    )
    assert code == 400 and "model_name" in refused["message"]
    code, updated = call_json(f"{router}/update-model", "POST", update, token)
    assert code == 200, updated
    assert updated["success"] is True and updated["new_model"]["version"] == "2"
    assert updated["previous_model"] is None
    # The controller answers once the routers report the change: no wait is needed here.
    code, status = call_json(f"{router}/canary-status")
    assert status["next_model"]["version"] == "2" and status["canary_probability"] == 0.1
    assert status["models_identical"] is False
    for bad in (1.5, -0.1, "half", True, None):
        code, refused = call_json(
            f"{router}/canary-probability", "POST", {"probability": bad}, token
        )
        assert code == 400 and "probability" in refused["message"], bad
    code, moved = call_json(f"{router}/canary-probability", "POST", {"probability": 0.3}, token)
    assert code == 200 and moved["canary_probability"] == 0.3
    assert moved["previous_probability"] == 0.1
    code, health = call_json(f"{router}/health")
    assert code == 200
    assert health["current_model_loaded"] is True and health["next_model_loaded"] is True
    assert health["next_model_info"]["version"] == "2" and health["canary_probability"] == 0.3
    code, accepted = call_json(f"{router}/accept-next-model", "POST", {}, token)
    assert code == 200, accepted
    assert accepted["previous_current_model"]["version"] == "1"
    assert accepted["new_current_model"]["version"] == "2" == accepted["next_model"]["version"]
    code, again = call_json(f"{router}/accept-next-model", "POST", {}, token)
    assert code == 400 and "no canary" in again["message"]
    code, info = call_json(f"{router}/model-info")
    assert code == 200 and info["current_model"]["version"] == "2"
    assert info["available_models"][0]["name"] == "StudentExamPredictor"


def _owned_servers(system: System) -> list[dict[str, Any]]:
    return owned_servers(system.state)


def test_a_controller_killed_after_a_change_restarts_consistent(system: System) -> None:
    """Killed after a change with the aliases behind the file: its model servers outlive it
    (handed over, still serving); the restart adopts them, the same processes, and moves the
    aliases. (Killed in the middle of a change: tests/test_reconciler.py.)"""
    code, answer = system.admin("POST", "/api/deploy", {"version": "2", "weight": 20})
    assert code == 200, answer
    killed_servers = _owned_servers(system)
    os.killpg(system.processes[0].pid, signal.SIGKILL)
    system.processes[0].wait(timeout=10)
    assert all(group_alive(server["pid"]) for server in killed_servers)
    for server in killed_servers:
        wait_for_url(f"{server['url']}/health")  # serving with no controller
    client = MlflowClient(system.settings.tracking_uri, system.settings.tracking_uri)
    client.delete_registered_model_alias(system.settings.model_name, "challenger")
    system.restart_controller()
    config = yaml.safe_load((system.state / "routing.yaml").read_text())
    assert (config["stable"]["version"], config["canary"]["version"]) == ("1", "2")
    assert config["canary"]["weight"] == 20
    assert aliases_of(system.settings) == {"champion": "1", "challenger": "2"}
    owned = _owned_servers(system)
    assert sorted(s["version"] for s in owned) == ["1", "2"]
    assert {s["pid"] for s in owned} == {s["pid"] for s in killed_servers}
    assert all(group_alive(s["pid"]) for s in owned)


def test_a_model_server_that_dies_is_restarted(system: System) -> None:
    """The controller restarts a dead stable server on its port; predictions come back."""
    (server,) = _owned_servers(system)
    os.killpg(server["pid"], signal.SIGKILL)
    wait_for_url(f"{server['url']}/health", log=system.state / "controller.log", timeout=90)
    (restarted,) = _owned_servers(system)
    assert restarted["url"] == server["url"] and restarted["pid"] != server["pid"]
    assert "restarting it" in (system.state / "controller.log").read_text()


def test_an_invalid_routing_file_keeps_the_controller_and_its_servers(system: System) -> None:
    """A bad hand edit of the routing file: the controller logs it once and keeps supervising
    the last good split's servers (it used to exit, stopping every server); the router keeps
    serving; once the file is put back, changes work again."""
    (server,) = _owned_servers(system)
    routing = system.state / "routing.yaml"
    good = routing.read_bytes()
    routing.write_bytes(b"stable: [unclosed\n  weight: {{\n")
    log = system.state / "controller.log"
    wait_until_sync(lambda: "the routing file cannot be read" in log.read_text(),
                    "the controller saying the routing file cannot be read")  # fmt: skip
    os.killpg(server["pid"], signal.SIGKILL)  # and it still supervises the last split
    wait_for_url(f"{server['url']}/health", log=log, timeout=90)
    assert system.processes[0].poll() is None
    assert log.read_text().count("the routing file cannot be read") == 1
    request = urllib.request.Request(f"{system.router_url}/invocations", data=BODY,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 200
    routing.write_bytes(good)
    wait_until_sync(lambda: "the routing file is readable again" in log.read_text(),
                    "the controller reading the routing file again")  # fmt: skip
    code, answer = system.admin("POST", "/api/deploy", {"version": "2", "weight": 10})
    assert code == 200, answer


def test_a_server_of_another_version_is_refused(system: System) -> None:
    """Adopting a URL that serves another version is a 400 naming both; nothing changes."""
    stable = json.loads(system.cli("status", "--json").stdout)["stable"]["url"]
    before = (system.state / "routing.yaml").read_bytes()
    code, answer = system.admin("POST", "/api/deploy", {"version": "3", "url": stable})
    assert code == 400, answer
    assert "version 1, not StudentExamPredictor version 3" in answer["message"]
    assert (system.state / "routing.yaml").read_bytes() == before


def test_input_signatures_are_compared_column_by_column() -> None:
    stable = {"a": "double", "b": "double", "c": "long"}
    assert incompatibilities(stable, dict(stable)) == []
    assert incompatibilities(stable, {"a": "double", "c": "string", "d": "double"}) == [
        "missing column 'b'", "extra column 'd'", "column 'c' is string, stable's is long",
    ]  # fmt: skip
