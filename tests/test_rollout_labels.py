"""Rollouts judged on late labels, for real: model servers, router, controller, and clients
whose ground truth arrives a while after their predictions."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from mlflow import MlflowClient

from common.settings import RegistrySettings
from contracts.labels import MAX_LABELS
from tests.conftest import TrainedRegistry
from tests.routers import wait_until
from tests.systems import System, copied_registry, running_system
from tests.test_rollout import _register
from training.dataset import DEFAULT_PATH, FEATURES, TARGET, load_dataset

pytestmark = pytest.mark.slow  # real MLflow, model servers or whole systems

VARIANTS = ("canary", "stable")
LABEL_DELAY_S = 1.0
"""Labels are sent this long after their prediction was answered (the exam is marked later)."""


@pytest.fixture(scope="module")
def trees(
    trained_registry: TrainedRegistry, tmp_path_factory: pytest.TempPathFactory
) -> RegistrySettings:
    """v3: an unpruned tree on the true scores (it answers the dataset's rows exactly); v4:
    the same on scores permuted across rows (the same predictions, on the wrong rows); v5:
    another tree on the true scores (a good canary)."""
    from sklearn.tree import DecisionTreeRegressor

    folder = tmp_path_factory.mktemp("label-registry")
    settings = copied_registry(trained_registry.settings, folder)
    frame = load_dataset(DEFAULT_PATH)
    features, score = frame[list(FEATURES)], frame[TARGET].to_numpy(dtype=float)
    permuted = np.random.default_rng(0).permutation(score)
    for target, seed in ((score, 0), (permuted, 0), (score, 1)):
        _register(settings, DecisionTreeRegressor(random_state=seed).fit(features, target),
                  features)  # fmt: skip
    return settings


@pytest.fixture
def system(trees: RegistrySettings, tmp_path: Path) -> Iterator[System]:
    with running_system(trees, tmp_path, stable_version="3") as built:
        yield built


@dataclass
class LabelledLoad:
    """Clients sending dataset rows through the router; each answer's true score is sent to
    /feedback `LABEL_DELAY_S` later."""

    system: System
    statuses: list[int] = field(default_factory=list)
    waiting: list[tuple[float, str, float]] = field(default_factory=list)
    labelled: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    sending: asyncio.Event = field(default_factory=asyncio.Event)
    """Labels are sent while set (the test may hold them back)."""

    async def client(self, seed: int) -> None:
        frame = load_dataset(DEFAULT_PATH)
        rows = frame[list(FEATURES)].to_dict(orient="records")
        truths = frame[TARGET].astype(float).tolist()
        chance = random.Random(seed)
        async with aiohttp.ClientSession() as session:
            while not self.stop.is_set():
                index = chance.randrange(len(rows))
                body = json.dumps({"dataframe_records": [rows[index]]})
                async with session.post(
                    f"{self.system.router_url}/invocations", data=body,
                    headers={"Content-Type": "application/json"},
                ) as answer:  # fmt: skip
                    await answer.read()
                    self.statuses.append(answer.status)
                    request_id = answer.headers["X-Request-Id"]
                self.waiting.append((time.monotonic(), request_id, truths[index]))

    async def labeller(self) -> None:
        headers = {"Authorization": f"Bearer {self.system.token}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            while not self.stop.is_set():
                await asyncio.sleep(0.2)
                if not self.sending.is_set():
                    continue
                due = [w for w in self.waiting if w[0] <= time.monotonic() - LABEL_DELAY_S]
                # A batch at most as large as /feedback takes (labels held back pile up).
                due = due[:MAX_LABELS]
                if not due:
                    continue
                del self.waiting[: len(due)]
                body = [{"request_id": i, "label": truth} for _, i, truth in due]

                async def taken(body: list[dict[str, Any]] = body) -> bool:
                    async with session.post(f"{self.system.router_url}/feedback",
                                            json=body) as answer:  # fmt: skip
                        assert answer.status in (200, 404), await answer.text()
                        return answer.status == 200

                # Logged every 0.5 s: a label may come before its record (404), so again.
                await wait_until(taken, "labels taken", within=30)
                self.labelled += len(body)


@pytest.fixture
async def load(system: System) -> AsyncIterator[LabelledLoad]:
    running = LabelledLoad(system)
    running.sending.set()
    tasks = [asyncio.create_task(running.client(seed)) for seed in range(3)]
    tasks.append(asyncio.create_task(running.labeller()))
    yield running
    running.stop.set()
    await asyncio.gather(*tasks)


async def _rollout(system: System, version: str, *options: str) -> dict[str, Any]:
    code, answer = await asyncio.to_thread(
        system.admin, "POST", "/api/deploy", {"version": version, "weight": 0}
    )
    assert code == 200, answer
    done = await asyncio.to_thread(
        system.cli, "rollout", "start", "--steps", "25,50,100", "--interval", "2s",
        "--min-requests", "20", "--min-labels", "20", "--label-wait", "60s", *options, "--json",
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr
    code, state = await asyncio.to_thread(system.admin, "GET", "/api/rollout")
    assert code == 200
    return state


def _failed(state: dict[str, Any]) -> set[str]:
    return {g["gate"] for entry in state["history"] for g in entry["gates"] if not g["passed"]}


async def test_a_canary_right_in_distribution_but_wrong_per_row_is_caught_by_labels(
    system: System, load: LabelledLoad
) -> None:
    """v4 answers stable's values on the wrong rows: no errors, the same latency and the same
    prediction distribution; the labels gate rolls it back once labels arrive."""
    state = await _rollout(system, "4")
    assert state["status"] == "rolled_back", state["message"]
    assert _failed(state) == {"label_errors"}, state["history"]
    assert "label_errors" in state["message"]
    assert any(entry["labelled"][0] > 0 for entry in state["history"])
    assert set(load.statuses) == {200}

    # The verdict is in MLflow: a run with the gates per window, tags, plots; the version
    # points to it.
    async def verdict_run() -> str:
        code, found = await asyncio.to_thread(system.admin, "GET", "/api/rollout")
        return str(found.get("verdict_run", "")) if code == 200 else ""

    async def verdict_written() -> bool:
        return bool(await verdict_run())

    await wait_until(verdict_written, "the verdict written to MLflow", within=60)
    run_id = await verdict_run()
    client = MlflowClient(system.settings.tracking_uri, system.settings.tracking_uri)
    run = client.get_run(run_id)
    assert run.data.tags["mlcanary.verdict"] == "rolled_back"
    assert "label_errors" in run.data.tags["mlcanary.reason"]
    assert run.data.tags["mlcanary.canary_version"] == "4"
    history = client.get_metric_history(run_id, "gate.label_errors.evidence")
    assert len(history) >= 1 and [m.step for m in history] == sorted(m.step for m in history)
    # Quality over time per variant: the canary's labelled rows are far worse than stable's.
    quality = {v: client.get_metric_history(run_id, f"{v}.label_error") for v in VARIANTS}
    assert quality["canary"] and quality["stable"], quality
    assert max(m.value for m in quality["canary"]) > max(m.value for m in quality["stable"])
    assert client.get_metric_history(run_id, "canary.p99_s")
    artifacts = {item.path for item in client.list_artifacts(run_id)}
    assert {"rollout.json", "gates.png", "variants.png", "predictions.png"} <= artifacts
    version = client.get_model_version(system.settings.model_name, "4")
    assert version.tags["mlcanary.rollout_run_id"] == run_id
    assert version.tags["mlcanary.rollout_verdict"] == "rolled_back"


async def test_a_good_canary_is_promoted_on_its_labels(system: System, load: LabelledLoad) -> None:
    state = await _rollout(system, "5")
    assert state["status"] == "promoted", state["history"]
    judged = [entry for entry in state["history"] if entry["outcome"] == "pass"]
    assert len(judged) == 3 and all(entry["labelled"][0] >= 0 for entry in judged)
    labelled = sum(entry["labelled"][0] for entry in state["history"])
    assert labelled >= 3 * 20  # each step had its 20 labelled canary rows
    assert set(load.statuses) == {200}


async def test_labels_late_past_the_wait_are_failed_checks_then_judged(
    system: System, load: LabelledLoad
) -> None:
    """Labels held back past the step's --label-wait: the windows wait, then are failed checks
    (the weight holds); once the labels come, the step is judged and the canary promoted."""
    load.sending.clear()
    rollout = asyncio.create_task(
        _rollout(system, "5", "--label-wait", "5s", "--max-failed-checks", "1000")
    )

    async def failed_for_labels() -> bool:
        code, state = await asyncio.to_thread(system.admin, "GET", "/api/rollout")
        history = state.get("history", []) if code == 200 else []
        return any("labels" in {g["gate"] for g in e["gates"] if not g["passed"]}
                   for e in history)  # fmt: skip

    await wait_until(failed_for_labels, "a window failed for want of labels", within=120)
    load.sending.set()
    state = await rollout
    assert state["status"] == "promoted", state["history"]
    outcomes = [entry["outcome"] for entry in state["history"]]
    first_fail = outcomes.index("fail")
    assert "waiting" in outcomes[:first_fail] and "pass" in outcomes[first_fail:], outcomes
    assert _failed(state) == {"labels"}
