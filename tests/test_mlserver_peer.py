"""MLServer, the reference Open Inference Protocol server, beside ours.

Field by field: MLServer (its MLflow runtime) and our model server serve the same saved models
of the zoo, are asked the same V2 requests, and must answer the same JSON (the request's id
echoed, numbers to 1e-9). Then MLServer serves a registered version as the stable behind the
router and our model server the candidate, and a rollout judges them over V2 traffic: an
identical twin is promoted, a shifted model rolled back.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from common.settings import RegistrySettings
from contracts.routing import RoutingConfig
from model_server.model.scoring import same_answer
from tests.conftest import TrainedRegistry
from tests.peers import PeerModel, start_mlserver
from tests.servers import ServerProcess
from tests.systems import running_system
from tests.test_rollout import (
    HEALTHY,
    SHIFTED,
    _cli,
    _deploy,
    _failed_gates,
    _rollout,
    sending,
    twin_and_shifted,
)
from tests.test_v2_model_server import ClientFactory, serve, v2_cases
from tests.zoo import KINDS

pytestmark = pytest.mark.slow  # real MLServer, real models

COMPARED = [
    "forest-classifier", "gradient-boosting", "hist-gradient-boosting", "predict-proba",
    "predict-log-proba", "string-labels", "two-outputs", "frame-out", "text-pipeline",
    "tensor", "type-hinted-strings", "type-hinted-datetimes", "xgboost", "lightgbm",
]  # fmt: skip
"""Every zoo kind MLServer answers. It fails with a 500 on the rest (a model returning a pandas
Series, `params`; a model without a signature), where ours answers (test_v2_model_server.py)."""


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, ServerProcess]]:
    """The compared kinds saved once, all served by one MLServer."""
    folder = tmp_path_factory.mktemp("peer-zoo")
    for name in COMPARED:
        KINDS[name].save(folder / name, True)
    models = [PeerModel(name, folder / name, version="unregistered") for name in COMPARED]
    server = start_mlserver(models, folder / "mlserver")
    try:
        server.wait_healthy()
        yield folder, server
    finally:
        server.stop()


@pytest.mark.parametrize("name", COMPARED)
async def test_our_v2_answers_are_mlserver_s_field_by_field(
    name: str, zoo: tuple[Path, ServerProcess], aiohttp_client: ClientFactory
) -> None:
    folder, mlserver = zoo
    ours = await serve(folder / name, aiohttp_client, model_name=name)
    compared = 0
    async with aiohttp.ClientSession() as session:
        for case, (request, _mlflow) in v2_cases(name).items():
            if case == "matrix":
                continue  # our extension: MLServer reads one input as one column, and fails
            asked = {**request, "id": f"{name}-{case}"}
            async with session.post(f"{mlserver.url}/v2/models/{name}/infer", json=asked) as a:
                theirs = (a.status, await a.json())
            answer = await ours.post(f"/v2/models/{name}/infer", json=asked)
            mine = (answer.status, await answer.json())
            assert theirs[0] == 200, (case, theirs)
            assert mine[0] == 200, (case, mine)
            assert same_answer(mine[1], theirs[1]), (case, mine[1], theirs[1])
            compared += 1
    assert compared >= 1


@pytest.fixture(scope="module")
def rollout_registry(
    trained_registry: TrainedRegistry, tmp_path_factory: pytest.TempPathFactory
) -> RegistrySettings:
    """The session registry with v3, a twin of v1, and v4, a shifted model."""
    return twin_and_shifted(trained_registry, tmp_path_factory.mktemp("peer-registry"))


@pytest.fixture(scope="module")
def exam_v1(rollout_registry: RegistrySettings, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Version 1 of the demo model, downloaded from the registry as MLServer loads it."""
    import mlflow

    folder = tmp_path_factory.mktemp("exam-v1")
    mlflow.set_tracking_uri(rollout_registry.tracking_uri)
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{rollout_registry.model_name}/1", dst_path=str(folder)
    )
    return Path(local)


@pytest.mark.parametrize(
    ("candidate", "verdict"), [(HEALTHY, "promoted"), (SHIFTED, "rolled_back")],
    ids=["identical-twin", "shifted"],
)  # fmt: skip
async def test_a_rollout_judges_our_canary_against_an_mlserver_stable(
    candidate: str, verdict: str, rollout_registry: RegistrySettings, exam_v1: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    mlserver = start_mlserver([PeerModel("exam", exam_v1, version="1")], tmp_path / "mlserver")
    try:
        await asyncio.to_thread(mlserver.wait_healthy)
        routing = RoutingConfig.model_validate({
            "model": rollout_registry.model_name,
            "stable": {"url": mlserver.url, "version": "1", "protocols": ["mlflow", "v2"],
                       "model_name": "exam"},
        })  # fmt: skip
        with running_system(rollout_registry, tmp_path, routing=routing) as system:
            async with sending(system.router_url, rollout_registry.model_name) as load:
                await _deploy(system, candidate)
                code, state = await _rollout(
                    system, "--steps", "20,50,100", "--interval", "1.5s", "--min-requests", "15"
                )
            assert state["status"] == verdict, state
            assert code == (0 if verdict == "promoted" else 1), state
            if verdict == "rolled_back":
                assert _failed_gates(state) == {"prediction_psi"}, state
            assert set(load.statuses) == {200}, {s: load.statuses.count(s) for s in load.statuses}
            assert len(load.statuses) > 100
            status = json.loads((await _cli(system, "status", "--json")).stdout)
            if verdict == "promoted":  # our server took over, under both protocols
                assert status["stable"]["version"] == candidate
            else:  # MLServer stays stable
                assert status["stable"]["url"] == mlserver.url
    finally:
        mlserver.stop()
