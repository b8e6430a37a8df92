"""Rollouts that ask and wait: gate webhooks obeyed, a promotion held until a person confirms.

Real model servers, router and controller (`running_system`), real HTTP receivers for the
webhooks. A refusing `pre-rollout` stops the rollout before any traffic moves; a failing `step`
webhook rolls back as a failed check does; `--confirm-promotion` holds before 100% until
`rollout confirm` (through a controller killed and restarted while it held), with who and why
audited; a `rollback` webhook that says yes rolls back at once. Latency is given a wide bound
here (`--max-p99-ratio 20`): these tests are about asking, not about the latency gate, and run
beside other tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from common.settings import RegistrySettings
from contracts.routing import read_routing_file
from controller.audit import read_audit
from controller.changerequests import RolloutRequest
from controller.errors import InvalidChange
from tests.conftest import TrainedRegistry
from tests.routers import wait_until
from tests.systems import System, running_system
from tests.test_rollout import HEALTHY, Load, sending, twin_and_shifted

pytestmark = pytest.mark.slow  # real MLflow, model servers, router and controller

ServerFactory = Callable[..., Awaitable[TestServer]]
QUIET = ("--max-p99-ratio", "20", "--p99-tolerance", "1")


@dataclass
class Hook:
    """A gate webhook: answers `status` (with `said`), keeping every call's body."""

    status: int = 200
    said: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{path:.*}", self.answer)
        return app

    async def answer(self, request: web.Request) -> web.Response:
        self.calls.append(await request.json())
        return web.Response(status=self.status, text=self.said)


@pytest.fixture(scope="module")
def hooks_registry(
    trained_registry: TrainedRegistry, tmp_path_factory: pytest.TempPathFactory
) -> RegistrySettings:
    """The session registry with v3, a twin of v1, and v4, a shifted model."""
    return twin_and_shifted(trained_registry, tmp_path_factory.mktemp("hooks-registry"))


@pytest.fixture
def system(hooks_registry: RegistrySettings, tmp_path: Path) -> Iterator[System]:
    with running_system(hooks_registry, tmp_path) as built:
        yield built


@pytest.fixture
async def load(system: System) -> AsyncIterator[Load]:
    async with sending(system.router_url) as running:
        yield running


async def hook_url(aiohttp_server: ServerFactory, hook: Hook, name: str) -> str:
    return str((await aiohttp_server(hook.app())).make_url(f"/{name}"))


async def deploy(system: System, version: str = HEALTHY) -> None:
    code, answer = await asyncio.to_thread(
        system.admin, "POST", "/api/deploy", {"version": version, "weight": 0}
    )
    assert code == 200, answer


async def rollout(system: System) -> dict[str, Any]:
    _code, state = await asyncio.to_thread(system.admin, "GET", "/api/rollout")
    return dict(state)


def reached(
    system: System, status: str = "", *, held: bool = False
) -> Callable[[], Awaitable[bool]]:
    """A condition for `wait_until`: the rollout has `status`, or (`held`) holds for a
    confirmation."""

    async def check() -> bool:
        state = await rollout(system)
        return bool(state.get("held")) if held else state["status"] == status

    return check


def audit(system: System) -> list[dict[str, Any]]:
    """The audit log as the controller has written it so far (a line being written is left
    out, as `controller.audit.read_audit` leaves it out)."""
    return read_audit(system.state / "audit.jsonl", last=100_000)


async def test_a_refusing_pre_rollout_hook_stops_it_before_any_traffic_moves(
    system: System, aiohttp_server: ServerFactory
) -> None:
    hook = Hook(status=403, said="offline evaluation: AUC 0.61 under 0.70")
    await deploy(system)
    url = await hook_url(aiohttp_server, hook, "pre")
    done = await asyncio.to_thread(
        system.cli, "rollout", "start", "--steps", "10,100", "--interval", "1s",
        "--hook", f"pre-rollout={url}",
    )  # fmt: skip
    assert done.returncode != 0
    assert "pre-rollout webhook said no (403: offline evaluation: AUC 0.61" in done.stderr
    assert "no traffic moved" in done.stderr
    config, _version = read_routing_file(system.state / "routing.yaml")
    assert config.canary is not None and config.canary.weight == 0
    assert (await rollout(system))["status"] == "idle"
    (call,) = hook.calls
    assert call["hook"] == "pre-rollout" and call["canary_version"] == HEALTHY
    (asked,) = [r for r in audit(system) if r["action"] == "rollout-hook"]
    assert asked["hook"] == "pre-rollout" and asked["status"] == 403
    assert "/pre" not in json.dumps(asked)  # the URL is shown without its path


async def test_a_failing_step_hook_rolls_back_as_a_failed_check(
    system: System, aiohttp_server: ServerFactory
) -> None:
    hook = Hook(status=500, said="smoke test failed")
    await deploy(system)
    url = await hook_url(aiohttp_server, hook, "step")
    done = await asyncio.to_thread(
        system.cli, "rollout", "start", "--steps", "10,100", "--interval", "1s",
        "--max-failed-checks", "2", "--hook", f"step={url}", "--json",
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    state = await rollout(system)
    assert state["status"] == "rolled_back", state
    assert [entry["outcome"] for entry in state["history"]] == ["fail", "fail"]
    assert all("the step webhook said no (500: smoke test failed)" in entry["problem"]
               for entry in state["history"])  # fmt: skip
    assert len(hook.calls) == 2 and {call["hook"] for call in hook.calls} == {"step"}


async def test_a_promotion_waits_for_a_person_through_a_controller_restart(
    system: System, load: Load
) -> None:
    await deploy(system)
    started = await asyncio.to_thread(
        system.cli, "rollout", "start", "--steps", "50,100", "--interval", "1s",
        "--min-requests", "10", "--confirm-promotion", "--detach", *QUIET,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr

    await wait_until(reached(system, held=True), "the rollout holding for a confirmation", 90)
    state = await rollout(system)
    assert state["status"] == "running" and state["weight"] == 50, state
    assert "until the rollout is confirmed" in state["message"]
    # Still held after windows more, and after the controller is killed and started again.
    passed = len(state["history"])
    await wait_until(lambda: _judged(system) >= passed + 2, "two more windows", 60)
    assert (await rollout(system))["weight"] == 50
    # Killed, the controller hands its model servers over to the next one: they keep serving.
    os.killpg(system.processes[0].pid, signal.SIGKILL)
    system.processes[0].wait(timeout=10)
    await asyncio.to_thread(system.restart_controller)
    resumed = await rollout(system)
    assert resumed["status"] == "running" and resumed["held"] and resumed["weight"] == 50
    confirmed = await asyncio.to_thread(
        system.cli, "rollout", "confirm", "--reason", "dashboards look right", "--by", "dana"
    )
    assert confirmed.returncode == 0, confirmed.stderr

    await wait_until(reached(system, "promoted"), "the promotion after the confirmation", 90)
    final = await rollout(system)
    assert final["confirmation"]["by"] == "dana"
    assert final["confirmation"]["reason"] == "dashboards look right"
    (record,) = [r for r in audit(system) if r["action"] == "rollout-confirm"]
    assert (record["by"], record["reason"]) == ("dana", "dashboards look right")
    assert set(load.statuses) == {200}  # not one request failed, the kill included


def _judged(system: System) -> int:
    return sum(1 for r in audit(system) if r["action"] == "rollout-judgement")


async def test_a_rollback_hook_saying_yes_rolls_back_at_once(
    system: System, aiohttp_server: ServerFactory
) -> None:
    hook = Hook(status=404)
    await deploy(system)
    url = await hook_url(aiohttp_server, hook, "rollback")
    started = await asyncio.to_thread(
        system.cli, "rollout", "start", "--steps", "10,100", "--interval", "60s",
        "--hook", f"rollback={url}", "--detach",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    await wait_until(lambda: len(hook.calls) >= 2, "the rollback hook polled", 30)
    assert (await rollout(system))["status"] == "running"
    hook.status, hook.said = 200, "the on-call said so"

    await wait_until(reached(system, "rolled_back"), "the rollback", 30)
    state = await rollout(system)
    assert "the rollback webhook asked for it (the on-call said so)" in state["message"]
    assert state["history"] == []  # before its first 60 s window was judged
    config, _version = read_routing_file(system.state / "routing.yaml")
    assert config.canary is None or config.canary.weight == 0
    polls = [r for r in audit(system) if r["action"] == "rollout-hook"]
    assert [(r["hook"], r["status"]) for r in polls] == [("rollback", 404), ("rollback", 200)]


async def test_a_confirm_promotion_hook_confirms_when_it_says_yes(
    system: System, load: Load, aiohttp_server: ServerFactory
) -> None:
    hook = Hook(status=409, said="change freeze until 18:00")
    await deploy(system)
    url = await hook_url(aiohttp_server, hook, "confirm")
    started = await asyncio.to_thread(
        system.cli, "rollout", "start", "--steps", "50,100", "--interval", "1s",
        "--min-requests", "10", "--hook", f"confirm-promotion={url}", "--detach", *QUIET,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr

    await wait_until(reached(system, held=True), "the rollout holding for its webhook", 90)
    await wait_until(lambda: len(hook.calls) >= 2, "the webhook asked again", 60)
    assert (await rollout(system))["weight"] == 50
    hook.status, hook.said = 200, "freeze over"

    await wait_until(reached(system, "promoted"), "the promotion once the webhook said yes", 90)
    final = await rollout(system)
    assert final["confirmation"]["by"] == "the confirm-promotion webhook"
    assert final["confirmation"]["reason"] == "freeze over"
    assert {call["hook"] for call in hook.calls} == {"confirm-promotion"}


def test_pause_and_confirm_steps_are_read_into_the_plan() -> None:
    asked = RolloutRequest.model_validate({"steps": [10, "pause", 50, "confirm", 100]})
    plan = asked.plan()
    assert (plan.steps, plan.pauses, plan.confirm_before) == ((10.0, 50.0, 100.0), (1,), 2)
    assert plan.hold_point == 2 and plan.needs_confirmation
    assert RolloutRequest.model_validate({"steps": [10, 50]}).plan().hold_point == 2
    assert RolloutRequest.model_validate({"steps": [10, 100]}).plan().hold_point == 1
    for bad, words in (([("pause"), 10, 100], "come after a step"),
                       ([10, "confirm", 50, "confirm", 100], "one confirm at most")):  # fmt: skip
        with pytest.raises(InvalidChange, match=words):
            RolloutRequest.model_validate({"steps": bad}).plan()


async def test_a_pause_step_holds_until_the_operator_resumes(system: System, load: Load) -> None:
    await deploy(system)
    started = await asyncio.to_thread(
        system.cli, "rollout", "start", "--steps", "50,pause,100", "--interval", "1s",
        "--min-requests", "10", "--detach", *QUIET,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr

    await wait_until(reached(system, "paused"), "the plan's pause", 90)
    state = await rollout(system)
    assert state["weight"] == 50 and "paused by the plan before step 2" in state["message"]
    (record,) = [r for r in audit(system) if r["action"] == "rollout-pause"]
    assert record["by"] == "the plan"
    resumed = await asyncio.to_thread(system.cli, "rollout", "resume", "--reason", "looked")
    assert resumed.returncode == 0, resumed.stderr

    await wait_until(reached(system, "promoted"), "the promotion after resuming", 90)
    assert set(load.statuses) == {200}
