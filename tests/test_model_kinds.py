"""Models other than the demo's regressors start, and answer exactly as MLflow's handler does.

A first part of issue 14's model zoo: a classifier with string labels, a `predict_proba` model,
a two-output forest and a type-hinted PythonModel taking bytes, each logged with an input
example (which the warm-up answers, and compares the fast path on).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from model_server.app import STATE, create_app
from model_server.loading import LoadedModel, load, resolve
from model_server.scoring import score_with_mlflow
from model_server.settings import ServerSettings

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
COLUMNS = ["a", "b", "c"]


def _frame() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    return pd.DataFrame(rng.uniform(0, 10, (120, 3)), columns=COLUMNS)


def _saved(folder: Path, estimator: Any, target: Any, **options: Any) -> LoadedModel:
    """Fit, save with an input example, and load the model as the native server does."""
    import mlflow.sklearn
    from mlflow.models import infer_signature

    frame = _frame()
    estimator.fit(frame, target)
    predict = getattr(estimator, options.get("pyfunc_predict_fn", "predict"))
    mlflow.sklearn.save_model(
        estimator, folder, signature=infer_signature(frame, predict(frame)),
        input_example=frame.head(3), serialization_format="cloudpickle", **options,
    )  # fmt: skip
    return load(resolve(str(folder)))


class ByteLengths(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    """A type-hinted model on bytes: MLflow's server hands it base64 text decoded."""

    def predict(self, model_input: list[bytes], params: dict[str, Any] | None = None) -> list[int]:
        return [len(item) for item in model_input]


def _kinds(folder: Path) -> dict[str, LoadedModel]:
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.linear_model import LogisticRegression

    frame = _frame()
    labels = np.where(frame["a"] + frame["b"] > 10, "pass", "fail")
    two = np.column_stack([frame["a"] * 2, frame["b"] - frame["c"]])
    return {
        "string labels": _saved(folder / "labels", LogisticRegression(), labels),
        "predict_proba": _saved(
            folder / "proba", LogisticRegression(), labels, pyfunc_predict_fn="predict_proba"
        ),
        "two outputs": _saved(
            folder / "two", RandomForestRegressor(n_estimators=5, random_state=0), two
        ),
        "bytes": _python_model(folder / "bytes"),
    }


def _python_model(folder: Path) -> LoadedModel:
    mlflow.pyfunc.save_model(folder, python_model=ByteLengths(), input_example=[b"abc", b"de"])
    return load(resolve(str(folder)))


@pytest.fixture(scope="module")
def kinds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LoadedModel]:
    return _kinds(tmp_path_factory.mktemp("kinds"))


@pytest.mark.parametrize("kind", ["string labels", "predict_proba", "two outputs", "bytes"])
async def test_each_kind_starts_and_answers_as_mlflow_does(
    kinds: dict[str, LoadedModel], kind: str, aiohttp_client: ClientFactory
) -> None:
    model = kinds[kind]
    assert model.warm_up.startswith("warm"), model.warm_up
    app = create_app(
        ServerSettings(model_uri=model.resolved.requested_uri), model.resolved,
        loader=lambda _resolved: model,
    )  # fmt: skip
    client = await aiohttp_client(app)
    await asyncio.wait_for(app[STATE].settled.wait(), 30)
    rows = _frame().tail(5).to_dict(orient="records")
    bodies = (
        json.dumps({"dataframe_records": rows}).encode(),
        json.dumps({"dataframe_split": {"columns": COLUMNS,
                                        "data": [list(row.values()) for row in rows]}}).encode(),
    ) if kind != "bytes" else (b'{"inputs": ["aGVsbG8=", ""]}',)  # fmt: skip
    for body in bodies:
        answer = await client.post(
            "/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        expected = score_with_mlflow(model, body, "application/json")
        assert (answer.status, await answer.read()) == (expected.status, expected.body)
    path = (await (await client.get("/metadata")).json())["path"]
    if kind == "bytes":
        assert json.loads(expected.body) == {"predictions": [5, 0]}
        assert path == "MLflow's path: the python_function flavor"
    if kind == "predict_proba":
        assert model.fast_path is None  # the fast path predicts labels, not probabilities
        assert path == "MLflow's path: the model answers predict_proba"
        answered = json.loads(expected.body)["predictions"]
        assert isinstance(answered[0], list) and len(answered[0]) == 2
