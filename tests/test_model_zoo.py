"""Every kind of the model zoo served by both engines: the same payloads, the same answers.

Issue 14's parity proof. Each kind of `tests/zoo.py` is saved twice (with and without an input
example: the models differ only by it, and MLflow's server does not read it) and served by
the native engine both ways and by `mlflow models serve`; every payload of the kind's matrix
(every JSON format, CSV, params, bad input) must get the same status, content type and body
(numbers to 1e-9) from each. In process, each kind must answer as MLflow's own handler and
`/metadata` must say which path it takes and why.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp import web
from aiohttp.test_utils import TestClient

from model_server.http.app import create_app
from model_server.http.state import STATE
from model_server.model.loading import load, resolve
from model_server.model.scoring import same_answer, score_with_mlflow
from model_server.model.served import served_in_process
from model_server.settings import ServerSettings
from tests.servers import ServerProcess, start_model_server
from tests.zoo import KINDS, Kind

pytestmark = pytest.mark.slow  # real MLflow, model servers or whole systems

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]

PATHS = {
    "string-labels": "fast path: compiled predict",
    "predict-proba": "fast path: compiled predict_proba",
    "predict-log-proba": "fast path: compiled predict_log_proba",
    "two-outputs": "fast path: compiled predict",
    "forest-classifier": "fast path: compiled predict",
    "gradient-boosting": "fast path: compiled predict_proba",
    "hist-gradient-boosting": "fast path: compiled predict",
    "text-pipeline": "fast path: compiled predict",
    "frame-out": "MLflow's path: the python_function flavor",
    "params": "MLflow's path: the python_function flavor",
    "tensor": "MLflow's path: the signature names no input columns",
    "no-signature": "MLflow's path: the signature names no input columns",
    "type-hinted-strings": "MLflow's path: the python_function flavor",
    "type-hinted-bytes": "MLflow's path: the python_function flavor",
    "type-hinted-datetimes": "MLflow's path: the python_function flavor",
    "xgboost": "fast path: XGBoost's predict",
    "lightgbm": "fast path: LightGBM's predict",
}
"""Which path answers plain JSON rows of each kind, as `/metadata` says."""


def test_every_kind_has_its_path_written_down() -> None:
    assert PATHS.keys() == KINDS.keys()


# As in a server: log(0) is -inf, MLflow's answer too (predict_log_proba on extreme rows).
@pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning")
@pytest.mark.parametrize("example", [True, False], ids=["example", "no-example"])
@pytest.mark.parametrize("name", list(KINDS))
async def test_each_kind_answers_as_mlflow_s_handler(
    name: str, example: bool, tmp_path: Path, aiohttp_client: ClientFactory
) -> None:
    kind = KINDS[name]
    kind.save(tmp_path / "model", example)
    model = load(resolve(str(tmp_path / "model")))
    warmed = model.serving_example is not None
    assert model.warm_up.startswith("warm" if warmed else "no input example"), model.warm_up
    app = create_app(
        ServerSettings(model_uri=model.resolved.requested_uri), model.resolved,
        loader=lambda _resolved: served_in_process(model),
    )  # fmt: skip
    client = await aiohttp_client(app)
    await asyncio.wait_for(app[STATE].settled.wait(), 30)
    for payload, (body, content_type) in kind.bodies().items():
        answer = await client.post(
            "/invocations", data=body, headers={"Content-Type": content_type}
        )
        expected = score_with_mlflow(model, body, content_type)
        got = answer.status, answer.headers["Content-Type"], await answer.read()
        assert got[:2] == (expected.status, expected.content_type), (payload, got, expected)
        assert same_answer(_decoded(got[2]), _decoded(expected.body)), (payload, got, expected)
        assert (answer.status == 200) or not kind.must_answer(payload), (payload, got)
    assert (await (await client.get("/metadata")).json())["path"] == PATHS[name]


@dataclass(frozen=True)
class Served:
    kind: Kind
    natives: dict[str, ServerProcess]
    """The native engine on the model saved with an input example, and without one."""
    mlflow: ServerProcess


@pytest.fixture(scope="module", params=list(KINDS))
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    name = request.param
    folder = tmp_path_factory.mktemp("zoo")
    kind = KINDS[name]
    kind.save(folder / "example", True)
    kind.save(folder / "no-example", False)
    tracking = f"sqlite:///{folder / 'unused.db'}"
    # MLflow's messages list Python sets, ordered by each process's hash seed: share one.
    seeded = {"PYTHONHASHSEED": "0"}
    servers = {
        saved: start_model_server(
            str(folder / saved), tracking, folder / f"native-{saved}.log", environment=seeded
        )
        for saved in ("example", "no-example")
    }
    reference = start_model_server(
        str(folder / "example"), tracking, folder / "mlflow.log", engine="mlflow",
        environment=seeded,
    )  # fmt: skip
    try:
        for server in (*servers.values(), reference):
            server.wait_healthy()
        yield Served(kind, servers, reference)
    finally:
        for server in (*servers.values(), reference):
            server.stop()


def _answer(server: ServerProcess, body: bytes, content_type: str) -> tuple[int, str, Any]:
    answer = requests.post(
        f"{server.url}/invocations", data=body, headers={"Content-Type": content_type},
        timeout=60,
    )  # fmt: skip
    return answer.status_code, answer.headers.get("Content-Type", ""), _decoded(answer.content)


def _decoded(body: bytes) -> Any:
    """A JSON body decoded (MLflow writes NaN and Infinity), else its text (a 415's)."""
    try:
        return json.loads(body)
    except ValueError:
        return body.decode()


def test_both_engines_answer_every_payload_alike(served: Served) -> None:
    for payload, (body, content_type) in served.kind.bodies().items():
        reference = _answer(served.mlflow, body, content_type)
        assert (reference[0] == 200) or not served.kind.must_answer(payload), (payload, reference)
        for saved, server in served.natives.items():
            native = _answer(server, body, content_type)
            assert native[:2] == reference[:2], (saved, payload, native, reference)
            assert same_answer(native[2], reference[2]), (saved, payload, native, reference)
