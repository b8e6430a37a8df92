"""The model server's Open Inference Protocol (V2): conformance, and the same answers as MLflow's.

Every kind of the model zoo is asked the same rows over both protocols: `/invocations` and
`/v2/models/{name}/infer` (tensors one per column, in both shapes, one 2-D tensor, the pandas
codec), and the V2 answer, read back as MLflow's `predictions`, must be the same numbers and
classes. Where a kind cannot be asked in V2 the answer is a 4xx `{"error"}` saying why. The
protocol's other endpoints, its errors (each naming the field) and its 404s are checked on one
model. MLServer's answers for the same models are compared in `test_mlserver_peer.py`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from common.predictions import mlflow_shaped
from model_server.http.app import create_app
from model_server.http.state import STATE
from model_server.model.loading import load, resolve
from model_server.model.scoring import same_answer
from model_server.model.served import served_in_process
from model_server.settings import ServerSettings
from tests.zoo import KINDS, MIXED_ROWS, NUMERIC_ROWS

pytestmark = pytest.mark.slow  # real MLflow models

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
NAME = "zoo"
V2_TYPES = {"float64": "FP64", "int64": "INT64", "object": "BYTES", "str": "BYTES", "bool": "BOOL"}


def column_inputs(frame: pd.DataFrame, *, flat: bool = False) -> list[dict[str, Any]]:
    """One input per column: shape [n, 1] (or [n] when `flat`), typed by the column."""
    rows = len(frame)
    return [
        {"name": str(name), "shape": [rows] if flat else [rows, 1],
         "datatype": V2_TYPES[str(frame[name].dtype)], "data": frame[name].tolist()}
        for name in frame.columns
    ]  # fmt: skip


def v2_cases(name: str) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Each V2 request asked of a kind, with the `/invocations` request that means the same."""
    if name == "tensor":
        rows = NUMERIC_ROWS.to_numpy()
        tensor = {"name": "input-0", "shape": list(rows.shape), "datatype": "FP64",
                  "data": rows.flatten().tolist()}  # fmt: skip
        return {"tensor": ({"inputs": [tensor]}, {"inputs": rows.tolist()})}
    if name.startswith("type-hinted-"):
        values = KINDS[name].payloads["list"]["inputs"]
        text = {"name": "input-0", "shape": [len(values), 1], "datatype": "BYTES", "data": values}
        return {"text": ({"inputs": [text]}, {"inputs": values})}
    frame = MIXED_ROWS if name == "text-pipeline" else NUMERIC_ROWS
    split = {"dataframe_split": {"columns": list(frame.columns),
                                 "data": frame.to_numpy().tolist()}}  # fmt: skip
    cases = {
        "columns": ({"inputs": column_inputs(frame)}, split),
        "columns-flat": ({"inputs": column_inputs(frame, flat=True)}, split),
        "pandas-codec": (
            {"parameters": {"content_type": "pd"}, "inputs": column_inputs(frame)},
            split,
        ),
    }
    if name != "text-pipeline":
        matrix = {"name": "rows", "shape": list(frame.shape), "datatype": "FP64",
                  "data": frame.to_numpy().flatten().tolist()}  # fmt: skip
        cases["matrix"] = ({"inputs": [matrix]}, split)
    if name == "params":
        cases["params"] = (
            {"parameters": {"scale": 2.5}, "inputs": column_inputs(frame)},
            {**split, "params": {"scale": 2.5}},
        )
    return cases


async def serve(
    folder: Path, aiohttp_client: ClientFactory, model_name: str = NAME
) -> TestClient[Any, Any]:
    """Serve a saved model in this process under a V2 name (`zoo` unless given)."""
    model = load(resolve(str(folder)))
    settings = ServerSettings(model_uri=str(folder), model_name=model_name)
    app = create_app(settings, model.resolved, loader=lambda _resolved: served_in_process(model))
    client = await aiohttp_client(app)
    await asyncio.wait_for(app[STATE].settled.wait(), 60)
    return client


@pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning")
@pytest.mark.parametrize("name", list(KINDS))
async def test_both_protocols_answer_alike(
    name: str, tmp_path: Path, aiohttp_client: ClientFactory
) -> None:
    KINDS[name].save(tmp_path / "model", True)
    client = await serve(tmp_path / "model", aiohttp_client)
    answered = 0
    for case, (v2_request, mlflow_request) in v2_cases(name).items():
        mlflow = await client.post("/invocations", json=mlflow_request)
        v2 = await client.post(f"/v2/models/{NAME}/infer", json=v2_request)
        v2_body = await v2.json()
        if name == "no-signature" and case == "matrix":
            assert v2.status == 400, v2_body  # no signature names the columns of one tensor
            assert "signature names 0" in v2_body["error"], v2_body
            continue
        if mlflow.status != 200 or v2.status != 200:
            # V2 refuses only what MLflow's protocol refuses too, with a 4xx saying why.
            assert 400 <= v2.status < 500 and v2_body["error"], (case, v2.status, v2_body)
            assert mlflow.status != 200, (case, v2_body)
            continue
        expected = (await mlflow.json())["predictions"]
        assert v2_body["model_name"] == NAME and v2_body["outputs"], (case, v2_body)
        assert same_answer(mlflow_shaped(v2_body), expected), (case, v2_body, expected)
        answered += 1
    assert answered, name


async def test_the_protocol_s_endpoints_and_errors(
    tmp_path: Path, aiohttp_client: ClientFactory
) -> None:
    KINDS["forest-classifier"].save(tmp_path / "model", True)
    client = await serve(tmp_path / "model", aiohttp_client)
    assert (await client.get("/v2/health/live")).status == 200
    assert await (await client.get("/v2/health/ready")).json() == {"ready": True}
    server = await (await client.get("/v2")).json()
    assert server["name"] == "mlcanary" and server["extensions"] == []
    for path in (f"/v2/models/{NAME}", f"/v2/models/{NAME}/versions/unregistered"):
        described = await (await client.get(path)).json()
        assert described["versions"] == ["unregistered"]
        assert [(i["name"], i["datatype"], i["shape"]) for i in described["inputs"]] == [
            ("a", "FP64", [-1, 1]), ("b", "FP64", [-1, 1]), ("c", "FP64", [-1, 1]),
        ]  # fmt: skip
        assert described["outputs"] == [{"name": "output-1", "datatype": "INT64", "shape": [-1, 1]}]
        ready = await client.get(f"{path}/ready")
        assert (ready.status, await ready.json()) == (200, {"name": NAME, "ready": True})
    good = {"id": "r-1", "inputs": column_inputs(NUMERIC_ROWS.head(2))}
    answer = await client.post(f"/v2/models/{NAME}/versions/unregistered/infer", json=good)
    body = await answer.json()
    assert answer.status == 200 and body["id"] == "r-1", body
    assert body["outputs"][0]["shape"] == [2, 1] and body["outputs"][0]["datatype"] == "INT64"
    # Without an id, the request's X-Request-Id (the router's) names the answer.
    answer = await client.post(
        f"/v2/models/{NAME}/infer", json={"inputs": good["inputs"]},
        headers={"X-Request-Id": "from-router"},
    )  # fmt: skip
    assert (await answer.json())["id"] == "from-router"

    async def refused(path: str, payload: Any) -> tuple[int, str]:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        answer = await client.post(path, data=data)
        body = await answer.json()
        assert set(body) == {"error"}, body
        return answer.status, body["error"]

    infer = f"/v2/models/{NAME}/infer"
    a_column = good["inputs"][0]
    cases: dict[str, tuple[str, Any, int, str]] = {
        "unknown model": ("/v2/models/other/infer", good, 404, "Model other not found"),
        "unknown version": (
            f"/v2/models/{NAME}/versions/9/infer", good, 404, "with version 9 not found"
        ),
        "not JSON": (infer, b"{", 400, "not JSON"),
        "no inputs": (infer, {"inputs": []}, 400, "`inputs`"),
        "bad datatype": (
            infer, {"inputs": [{**a_column, "datatype": "FP99"}]}, 400, "datatype 'FP99'"
        ),
        "shape and data disagree": (
            infer, {"inputs": [{**a_column, "shape": [3, 1]}]}, 400, "shape [3, 1] holds 3"
        ),
        "text in a number": (
            infer, {"inputs": [{**a_column, "data": ["x", 1.0]}]}, 400,
            "input 'a': FP64 data must be numbers",
        ),
        "a column missing": (infer, {"inputs": [a_column]}, 400, "missing inputs"),
        "an unknown codec": (
            infer, {**good, "parameters": {"content_type": "base64"}}, 400, "content_type"
        ),
        "a 3-D column": (
            infer, {"inputs": [{**a_column, "shape": [1, 2, 1]}]}, 400, "shape [n] or [n, 1]"
        ),
    }  # fmt: skip
    for case, (path, payload, status, words) in cases.items():
        got_status, message = await refused(path, payload)
        assert got_status == status and words in message, (case, got_status, message)
    assert (await client.get("/v2/models/other")).status == 404
    assert (await client.get("/v2/models/other/ready")).status == 404
    for method, path in (("GET", "/v2/repository/index"), ("DELETE", f"/v2/models/{NAME}")):
        answer = await client.request(method, path)
        assert answer.status == 404 and "is not an endpoint" in (await answer.json())["error"]
