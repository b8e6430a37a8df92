"""Automated rollouts for real: model servers, a router, the controller, windows of 1-2 s."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import random
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from common.settings import RegistrySettings
from mlcanary.sampling import request_of
from tests.conftest import TrainedRegistry
from tests.helpers import free_port
from tests.servers import start_model_server
from tests.systems import System, aliases_of, copied_registry, running_system
from training.dataset import DEFAULT_PATH, FEATURES, TARGET, load_dataset
from training.pipelines import ModelKind
from training.train import TrainOptions, register_estimator, train_and_register

# Alone: its 1 s windows judge latency, which the other worker's CPU bursts would distort.
pytestmark = [pytest.mark.slow, pytest.mark.alone]

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
HEALTHY, SHIFTED = "3", "4"
UNIT_SCALE, UNIT_SCALE_SHIFTED, CLASSIFIER, CLASSIFIER_FLIPPED = "5", "6", "7", "8"


@pytest.fixture(scope="module")
def rollout_registry(
    trained_registry: TrainedRegistry, tmp_path_factory: pytest.TempPathFactory
) -> RegistrySettings:
    """The session registry with a twin (v3) and a shifted model (v4), and v5-v8 of other
    kinds (see `_register_other_models`)."""
    settings = twin_and_shifted(trained_registry, tmp_path_factory.mktemp("rollout-registry"))
    _register_other_models(settings)
    return settings


def twin_and_shifted(trained: TrainedRegistry, folder: Path) -> RegistrySettings:
    """The session registry (v1 linear, v2 forest) copied, plus v3, a linear twin of v1
    (healthy), and v4, a linear model trained on exam scores shifted up by 10 (healthy by HTTP
    only)."""
    settings = copied_registry(trained.settings, folder)
    train_and_register(TrainOptions(kind=ModelKind.linear, alias=""), settings)
    shifted = folder / "shifted.csv"
    with DEFAULT_PATH.open(newline="") as source, shifted.open("w", newline="") as target:
        rows = list(csv.DictReader(source))
        writer = csv.DictWriter(target, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, TARGET: f"{float(row[TARGET]) + 10:.1f}"})
    train_and_register(TrainOptions(kind=ModelKind.linear, data_path=shifted, alias=""), settings)
    return settings


def _register_other_models(settings: RegistrySettings) -> None:
    """Register v5-v8, models of other kinds than the demo's 0..100 regressors.

    v5 predicts exam score / 100 (0.17..0.51) and v6 the same plus one sd of v5's predictions.
    v7 is a three-class classifier (score below its 60th percentile, to the 90th, above) and
    v8 the same with 10% of all rows moved from class 0 to class 2; both are unpruned trees, so
    on the dataset's rows (the test traffic) they answer their training labels exactly.
    """
    import numpy as np
    from sklearn.linear_model import LinearRegression
    from sklearn.tree import DecisionTreeClassifier

    frame = load_dataset(DEFAULT_PATH)
    features, score = frame[list(FEATURES)], frame[TARGET].to_numpy(dtype=float)
    unit = score / 100
    sd = float(np.std(LinearRegression().fit(features, unit).predict(features)))
    low, high = np.quantile(score, [0.6, 0.9])
    classes = np.where(score < low, 0, np.where(score < high, 1, 2))
    flipped = classes.copy()
    zeros = np.flatnonzero(classes == 0)
    flipped[zeros[: round(0.1 * len(classes))]] = 2
    for estimator, target in (
        (LinearRegression(), unit), (LinearRegression(), unit + sd),
        (DecisionTreeClassifier(random_state=0), classes),
        (DecisionTreeClassifier(random_state=0), flipped),
    ):  # fmt: skip
        _register(settings, estimator.fit(features, target), features)


def _register(settings: RegistrySettings, estimator: Any, features: Any) -> None:
    register_estimator(settings, estimator, features)


@pytest.fixture
def system(rollout_registry: RegistrySettings, tmp_path: Path) -> Iterator[System]:
    with running_system(rollout_registry, tmp_path) as built:
        yield built


def _requests(v2_model: str | None = None) -> tuple[str, list[bytes]]:
    """The path and every dataset row's body, in MLflow's protocol or (`v2_model`) V2's."""
    with DEFAULT_PATH.open(newline="") as handle:
        asked = [request_of(row, v2_model) for row in csv.DictReader(handle)]
    return asked[0][0], [body for _path, body in asked]


@dataclass
class Load:
    """Clients sending dataset rows through the router until stopped; statuses kept.

    To `/invocations`, or with `v2_model` to `/v2/models/{v2_model}/infer`."""

    url: str
    v2_model: str | None = None
    statuses: list[int] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def client(self, seed: int) -> None:
        (path, rows), chance = _requests(self.v2_model), random.Random(seed)
        async with aiohttp.ClientSession() as session:
            while not self.stop.is_set():
                async with session.post(
                    f"{self.url}{path}", data=chance.choice(rows),
                    headers={"Content-Type": "application/json"},
                ) as answer:  # fmt: skip
                    await answer.read()
                    self.statuses.append(answer.status)


@contextlib.asynccontextmanager
async def sending(url: str, v2_model: str | None = None) -> AsyncIterator[Load]:
    """Three clients sending dataset rows to the router at `url` while the block runs."""
    running = Load(url, v2_model)
    tasks = [asyncio.create_task(running.client(seed)) for seed in range(3)]
    try:
        yield running
    finally:
        running.stop.set()
        await asyncio.gather(*tasks)


@pytest.fixture
async def load(system: System) -> AsyncIterator[Load]:
    async with sending(system.router_url) as running:
        yield running


@dataclass
class FaultyProxy:
    """A real HTTP hop in front of a real model server: every n-th scoring request gets a
    500, or every scoring request waits `delay` seconds first. Everything else passes."""

    upstream: str
    error_every: int = 0
    delay: float = 0.0
    scored: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self.relay)
        return app

    async def relay(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.path == "/invocations":
            self.scored += 1
            if self.error_every and self.scored % self.error_every == 0:
                error = {"error_code": "INTERNAL_ERROR", "message": "injected"}
                return web.json_response(error, status=500)
            await asyncio.sleep(self.delay)
        async with aiohttp.ClientSession() as session, session.request(
            request.method, f"{self.upstream}{request.path_qs}", data=body,
            headers={"Content-Type": request.headers.get("Content-Type", "application/json")},
        ) as answer:  # fmt: skip
            return web.Response(
                status=answer.status, body=await answer.read(),
                content_type=answer.content_type,
            )  # fmt: skip


async def _cli(system: System, *args: str) -> Any:
    return await asyncio.to_thread(system.cli, *args)


async def _deploy(system: System, version: str, url: str | None = None) -> None:
    body: dict[str, Any] = {"version": version, "weight": 0}
    if url:
        body["url"] = url
    code, answer = await asyncio.to_thread(system.admin, "POST", "/api/deploy", body)
    assert code == 200, answer


async def _rollout(system: System, *options: str) -> tuple[int, dict[str, Any]]:
    done = await _cli(system, "rollout", "start", *options, "--json")
    code, state = await asyncio.to_thread(system.admin, "GET", "/api/rollout")
    assert code == 200
    return done.returncode, state


def _failed_gates(state: dict[str, Any]) -> set[str]:
    return {g["gate"] for entry in state["history"] for g in entry["gates"] if not g["passed"]}


async def _faulty_canary(
    system: System, aiohttp_server: ServerFactory, tmp_path: Path, **faults: Any
) -> Any:
    server = start_model_server(
        f"models:/StudentExamPredictor/{HEALTHY}", system.settings.tracking_uri,
        tmp_path / "faulty.log",
    )  # fmt: skip
    await asyncio.to_thread(server.wait_healthy)
    proxy = await aiohttp_server(FaultyProxy(server.url, **faults).app())
    await _deploy(system, HEALTHY, str(proxy.make_url("")).rstrip("/"))
    return server


async def test_a_healthy_canary_under_load_is_promoted(system: System, load: Load) -> None:
    await _deploy(system, HEALTHY)
    code, state = await _rollout(
        system, "--steps", "20,50,100", "--interval", "1.5s", "--min-requests", "15"
    )
    assert code == 0, state
    assert state["status"] == "promoted"
    assert [entry["outcome"] for entry in state["history"]] == ["pass"] * 3
    status = json.loads((await _cli(system, "status", "--json")).stdout)
    assert status["stable"]["version"] == HEALTHY and status["canary"] is None
    assert aliases_of(system.settings) == {"champion": HEALTHY}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{system.controller_url}/metrics") as answer,
    ):
        metrics = await answer.text()
    assert 'mlcanary_rollout_status{status="promoted"} 1.0' in metrics
    assert "mlcanary_rollout_step 3.0" in metrics
    assert 'mlcanary_rollout_gate_value{gate="prediction_psi"}' in metrics
    audit = [json.loads(line) for line in (system.state / "audit.jsonl").read_text().splitlines()]
    judged = [record for record in audit if record["action"] == "rollout-judgement"]
    assert len(judged) == 3 and judged[0]["window"]["gates"]
    assert set(load.statuses) == {200}


@pytest.mark.parametrize(
    ("faults", "gate"),
    [({"error_every": 20}, "error_ratio"), ({"delay": 0.02}, "p99_ratio")],
    ids=["five-percent-errors", "several-times-slower"],
)
async def test_a_faulty_canary_is_rolled_back_before_half_the_traffic(
    system: System,
    load: Load,
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    faults: dict[str, float],
    gate: str,
) -> None:
    """A canary answering 500 to every 20th request, or 20 ms late (several times its own
    latency here), is rolled back at 10% on that gate; the aliases stay as they were."""
    server = await _faulty_canary(system, aiohttp_server, tmp_path, **faults)
    try:
        code, state = await _rollout(
            system, "--steps", "10,25,50,100", "--interval", "1.5s", "--min-requests", "10"
        )
    finally:
        server.stop()
    assert code == 1 and state["status"] == "rolled_back", state
    assert max(entry["weight"] for entry in state["history"]) < 50
    assert gate in _failed_gates(state)
    status = json.loads((await _cli(system, "status", "--json")).stdout)
    assert status["canary"]["weight"] == 0 and status["stable"]["version"] == "1"
    assert aliases_of(system.settings) == {"champion": "1", "challenger": HEALTHY}


async def test_shifted_predictions_are_rolled_back_on_the_prediction_gate(
    system: System, load: Load
) -> None:
    await _deploy(system, SHIFTED)
    code, state = await _rollout(
        system, "--steps", "20,50,100", "--interval", "1.5s", "--min-requests", "15"
    )
    assert code == 1 and state["status"] == "rolled_back", state
    assert _failed_gates(state) == {"prediction_psi"}  # healthy by errors and latency
    assert set(load.statuses) == {200}


async def test_no_traffic_holds_the_weight_then_fails(system: System) -> None:
    await _deploy(system, HEALTHY)
    code, state = await _rollout(
        system, "--steps", "10,100", "--interval", "1s", "--min-requests", "15",
        "--max-insufficient", "2",
    )  # fmt: skip
    assert code == 1 and state["status"] == "rolled_back"
    assert [entry["outcome"] for entry in state["history"]] == ["insufficient"] * 2
    assert {entry["weight"] for entry in state["history"]} == {10}
    assert "too little traffic" in state["message"]


async def test_a_metrics_source_that_cannot_be_read_fails_closed(
    system: System, load: Load
) -> None:
    await _deploy(system, HEALTHY)
    code, state = await _rollout(
        system, "--steps", "10,100", "--interval", "1s", "--max-failed-checks", "1",
        "--prometheus", f"http://127.0.0.1:{free_port()}",
    )  # fmt: skip
    assert code == 1 and state["status"] == "rolled_back"
    assert state["history"][0]["outcome"] == "fail"
    assert "metrics could not be read" in state["history"][0]["problem"]


async def test_unexpected_errors_in_a_row_fail_the_rollout_closed(
    system: System, aiohttp_server: ServerFactory
) -> None:
    """A source answering what the judge cannot read (a Prometheus whose samples have no value)
    is not retried forever at the canary's weight: after three errors in a row the rollout is
    rolled back, says why, and the rollback is audited with that reason."""

    async def malformed(_request: web.Request) -> web.Response:
        sample = {"metric": {"variant": "stable"}, "value": []}
        return web.json_response({"status": "success", "data": {"result": [sample]}})

    app = web.Application()
    app.router.add_get("/api/v1/query", malformed)
    prometheus = await aiohttp_server(app)
    await _deploy(system, HEALTHY)
    code, state = await _rollout(
        system, "--steps", "10,100", "--interval", "1s", "--max-failed-checks", "5",
        "--prometheus", str(prometheus.make_url("")).rstrip("/"),
    )  # fmt: skip
    assert code == 1 and state["status"] == "rolled_back", state
    assert "3 unexpected errors in a row" in state["message"]
    assert "IndexError" in state["message"]
    assert state["history"] == []  # no window was judged: none passed
    audit = [json.loads(line) for line in (system.state / "audit.jsonl").read_text().splitlines()]
    assert any("3 unexpected errors in a row" in record["reason"] for record in audit), audit
    routing = yaml.safe_load((system.state / "routing.yaml").read_text())
    assert routing["canary"]["weight"] == 0, routing


async def test_a_restarted_controller_resumes_the_rollout_at_the_same_step(
    system: System, load: Load
) -> None:
    await _deploy(system, HEALTHY)
    started = await _cli(
        system, "rollout", "start", "--steps", "10,20,30,100", "--interval", "2s",
        "--min-requests", "10", "--detach",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    deadline = time.monotonic() + 30
    while True:
        _, state = await asyncio.to_thread(system.admin, "GET", "/api/rollout")
        if state["step"] >= 1:
            break
        assert time.monotonic() < deadline, state
        await asyncio.sleep(0.2)
    step = state["step"]
    os.killpg(system.processes[0].pid, signal.SIGKILL)
    system.processes[0].wait(timeout=10)
    await asyncio.to_thread(system.restart_controller)
    _, resumed = await asyncio.to_thread(system.admin, "GET", "/api/rollout")
    assert resumed["status"] == "running" and resumed["step"] == step
    deadline = time.monotonic() + 60
    while resumed["status"] == "running":
        assert time.monotonic() < deadline, resumed
        await asyncio.sleep(0.5)
        _, resumed = await asyncio.to_thread(system.admin, "GET", "/api/rollout")
    assert resumed["status"] == "promoted", resumed
    assert [entry["step"] for entry in resumed["history"]][:step] == list(range(1, step + 1))


async def test_pause_resume_abort_and_one_rollout_at_a_time(system: System) -> None:
    await _deploy(system, HEALTHY)
    started = await _cli(
        system, "rollout", "start", "--steps", "10,100", "--interval", "30s", "--detach"
    )
    assert started.returncode == 0, started.stderr
    code, refused = await asyncio.to_thread(system.admin, "POST", "/api/rollout", {})
    assert code == 400 and "already running" in refused["message"]
    code, refused = await asyncio.to_thread(
        system.admin, "POST", "/api/rollout", {"steps": [50, 10]}
    )
    assert code == 400 and "steps" in refused["message"]
    assert (await _cli(system, "rollout", "pause")).returncode == 0
    watched = await _cli(system, "rollout", "watch", "--once", "--json")
    assert json.loads(watched.stdout)["status"] == "paused"
    assert (await _cli(system, "rollout", "resume")).returncode == 0
    aborted = await _cli(system, "rollout", "abort", "--reason", "changed my mind")
    assert aborted.returncode == 0 and "aborted" in aborted.stdout
    status = json.loads((await _cli(system, "status", "--json")).stdout)
    assert status["canary"]["weight"] == 0
    audit = (system.state / "audit.jsonl").read_text()
    assert "changed my mind" in audit
    code, again = await asyncio.to_thread(system.admin, "POST", "/api/rollout/pause", {})
    assert code == 400 and "no rollout" in again["message"]

    # A rollback by hand ends a running rollout, which would otherwise raise the weight again.
    again = await _cli(system, "rollout", "start", "--steps", "10,100", "--interval", "30s",
                       "--detach")  # fmt: skip
    assert again.returncode == 0, again.stderr
    rolled_back = await _cli(system, "rollback", "--reason", "by hand")
    assert rolled_back.returncode == 0, rolled_back.stderr
    code, state = await asyncio.to_thread(system.admin, "GET", "/api/rollout")
    assert state["status"] == "aborted" and "by hand" in state["message"], state


async def _make_stable(system: System, version: str) -> None:
    """Deploy `version` and promote it, so that rollouts compare against it."""
    await _deploy(system, version)
    code, answer = await asyncio.to_thread(system.admin, "POST", "/api/promote", {})
    assert code == 200, answer


def _judged_predictions(state: dict[str, Any]) -> list[str]:
    """The prediction gates of the windows in which predictions were counted, in words."""
    return [
        f"{entry['weight']:g}%: {gate['gate']} {gate['value']:.3f}/{gate['limit']:g}"
        f" e={gate['evidence']:.3g}/{gate['needed']:g} ({gate['detail']})"
        for entry in state["history"] for gate in entry["gates"]
        if gate["gate"].startswith("prediction_psi") and gate["value"] is not None
    ]  # fmt: skip


async def test_an_identical_twin_is_promoted_over_many_small_windows_three_times(
    system: System, load: Load
) -> None:
    """v3 is a retrained twin of v1 (bit-identical predictions): rolled out in eleven 1 s
    windows from 5%, then v1 back over v3, then v3 again; never rolled back, and predictions
    judged in buckets cut from the stable version's own."""
    steps = "5,10,20,30,40,50,60,70,80,90,100"
    for version in (HEALTHY, "1", HEALTHY):
        await _deploy(system, version)
        code, state = await _rollout(
            system, "--steps", steps, "--interval", "1s", "--min-requests", "10"
        )
        why = (state.get("message"), state.get("history", [])[-2:])
        assert code == 0 and state["status"] == "promoted", why
        assert len(state["history"]) >= 11
        assert _judged_predictions(state), state["history"]
    routing = yaml.safe_load((system.state / "routing.yaml").read_text())
    assert routing["predictions"]["version"] == "1"  # cut from v1 while it was stable
    assert len(routing["predictions"]["outputs"]["predictions"]["edges"]) >= 5
    assert set(load.statuses) == {200}


async def test_a_zero_to_one_model_shifted_by_one_sd_is_rolled_back(
    system: System, load: Load
) -> None:
    """A model on another scale than the demo's (0.17..0.51) is judged in its own buckets."""
    await _make_stable(system, UNIT_SCALE)
    await _deploy(system, UNIT_SCALE_SHIFTED)
    code, state = await _rollout(
        system, "--steps", "10,25,50,100", "--interval", "1.5s", "--min-requests", "15"
    )
    assert code == 1 and state["status"] == "rolled_back", state
    assert _failed_gates(state) == {"prediction_psi"}
    assert max(entry["weight"] for entry in state["history"]) < 50
    routing = yaml.safe_load((system.state / "routing.yaml").read_text())
    edges = routing["predictions"]["outputs"]["predictions"]["edges"]
    assert routing["predictions"]["version"] == UNIT_SCALE and 0.1 < edges[0] < edges[-1] < 0.6


async def test_a_three_class_classifier_with_flipped_labels_is_rolled_back(
    system: System, load: Load
) -> None:
    """Class labels are counted one by one; 10% moved from class 0 to 2 is caught.

    Shares (0.6, 0.3, 0.1) against (0.5, 0.3, 0.2) need about 1,000 canary predictions and
    several times as many of stable's (docs/rollout-statistics.md): 8 s windows give them at
    this load (~400 requests/s); 2 s windows promoted it, as `rollout plan` would have warned.
    """
    await _make_stable(system, CLASSIFIER)
    await _deploy(system, CLASSIFIER_FLIPPED)
    code, state = await _rollout(
        system, "--steps", "10,25,50,100", "--interval", "8s", "--min-requests", "15"
    )
    assert code == 1 and state["status"] == "rolled_back", _judged_predictions(state)
    assert _failed_gates(state) == {"prediction_psi"}
    routing = yaml.safe_load((system.state / "routing.yaml").read_text())
    assert routing["predictions"]["outputs"]["predictions"] == {"classes": ["0", "1", "2"]}


async def test_the_planner_measures_traffic_and_warns_where_a_plan_falls_short(
    system: System, load: Load
) -> None:
    await _deploy(system, HEALTHY)
    code, refused = await asyncio.to_thread(
        system.admin, "POST", "/api/rollout/plan", {"measure_s": 0}
    )
    assert code == 400 and "measure_s" in refused["message"]
    planned = await _cli(
        system, "rollout", "plan", "--steps", "5,25,50,100", "--interval", "20s",
        "--measure", "2s", "--json",
    )  # fmt: skip
    report = json.loads(planned.stdout)
    assert report["requests_per_s"] > 0 and report["stable_p99_s"] > 0
    assert [step["weight"] for step in report["steps"]] == [5, 25, 50, 100]
    assert {found["fault"] for found in report["detections"]} >= {
        "5xx 2% against stable's 0.1%", "0..1 model, mean +0.5 sd",
    }  # fmt: skip
    assert report["false_rollbacks"] <= 0.01
    assert planned.returncode == (1 if report["warnings"] else 0)
    short = await _cli(
        system, "rollout", "plan", "--steps", "1,100", "--interval", "0.2s",
        "--min-requests", "100000", "--measure", "1s", "--json",
    )  # fmt: skip
    warnings = json.loads(short.stdout)["warnings"]
    assert short.returncode == 1 and any("under --min-requests 100000" in w for w in warnings)
    shown = await _cli(system, "rollout", "plan", "--interval", "0.2s", "--measure", "1s")
    assert "caught before 50%" in shown.stdout and "warning" in shown.stdout
