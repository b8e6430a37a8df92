"""MLServer, the reference Open Inference Protocol server, beside ours.

Field by field: MLServer (its MLflow runtime) and our model server serve the same saved models
of the zoo, are asked the same V2 requests, and must answer the same JSON (the request's id
echoed, numbers to 1e-9). Then MLServer serves a registered version as the stable behind the
router and our model server the candidate, and a rollout judges them over V2 traffic: an
identical twin is promoted, a shifted model rolled back.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from model_server.model.scoring import same_answer
from tests.peers import PeerModel, start_mlserver
from tests.servers import ServerProcess
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
