"""Models of other kinds served by both engines: the same payloads, the same answers.

The start of issue 14's model zoo. Each kind is saved to a folder (a path URI, which both
engines serve), with or without an input example, then served by the native engine and by
`mlflow models serve`; every payload of the kind's matrix must get the same status, content
type and body (numbers to 1e-9) from both. In-process, each kind logged with an input example
(which the warm-up answers and compares the fast path on) must answer byte for byte as MLflow's
own handler, and `/metadata` must say which path it takes.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests
from aiohttp import web
from aiohttp.test_utils import TestClient

from model_server.app import STATE, create_app
from model_server.loading import load, resolve, same_answer
from model_server.scoring import score_with_mlflow
from model_server.settings import ServerSettings
from tests.servers import ServerProcess, start_model_server

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
JSON = "application/json"

COLUMNS = ["a", "b", "c"]
BYTES_MODEL = """
    import mlflow.pyfunc
    from mlflow.models import set_model


    class ByteLengths(mlflow.pyfunc.PythonModel):
        def predict(self, model_input: list[bytes], params=None) -> list[int]:
            return [len(item) for item in model_input]


    set_model(ByteLengths())
"""


def _frame() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    return pd.DataFrame(rng.uniform(0, 10, (120, 3)), columns=COLUMNS)


def _sklearn(folder: Path, estimator: Any, target: Any, example: bool, **options: Any) -> None:
    import mlflow.sklearn
    from mlflow.models import infer_signature

    frame = _frame()
    estimator.fit(frame, target)
    predict = getattr(estimator, options.get("pyfunc_predict_fn", "predict"))
    mlflow.sklearn.save_model(
        estimator, folder, signature=infer_signature(frame, predict(frame)),
        input_example=frame.head(3) if example else None, serialization_format="cloudpickle",
        **options,
    )  # fmt: skip


def _labels(folder: Path, example: bool, **options: Any) -> None:
    from sklearn.linear_model import LogisticRegression

    frame = _frame()
    labels = np.where(frame["a"] + frame["b"] > 10, "pass", "fail")
    _sklearn(folder, LogisticRegression(), labels, example, **options)


def _two_outputs(folder: Path, example: bool) -> None:
    from sklearn.ensemble import RandomForestRegressor

    frame = _frame()
    two = np.column_stack([frame["a"] * 2, frame["b"] - frame["c"]])
    _sklearn(folder, RandomForestRegressor(n_estimators=5, random_state=0), two, example)


def _hist_gradient_boosting(folder: Path, example: bool) -> None:
    from sklearn.ensemble import HistGradientBoostingRegressor

    frame = _frame()
    target = frame["a"] * frame["b"] - frame["c"]
    _sklearn(folder, HistGradientBoostingRegressor(max_iter=20, random_state=0), target, example)


def _bytes(folder: Path, example: bool) -> None:
    import mlflow.pyfunc

    code = folder.parent / f"{folder.name}.py"
    code.write_text(textwrap.dedent(BYTES_MODEL))
    mlflow.pyfunc.save_model(
        folder, python_model=str(code), input_example=[b"abc", b"de"] if example else None
    )


ROWS = _frame().tail(4).to_dict(orient="records")
TABULAR = {
    "records": {"dataframe_records": ROWS},
    "split": {"dataframe_split": {"columns": COLUMNS,
                                  "data": [[row[c] for c in COLUMNS] for row in ROWS]}},
    "instances": {"instances": ROWS},
    "missing-column": {"dataframe_records": [{"a": 1.0, "b": 2.0}]},
    "text-in-a-number": {"dataframe_records": [{"a": "x", "b": 2.0, "c": 3.0}]},
}  # fmt: skip
CSV = ("a,b,c\n" + "\n".join(",".join(str(row[c]) for c in COLUMNS) for row in ROWS)).encode()
ANSWERED = {"records", "split", "instances", "csv", "base64"}
"""Payloads a model of the kind must answer with predictions (the rest are bad input)."""
BYTES = {
    "base64": {"inputs": ["aGVsbG8=", ""]},
    "not-text": {"inputs": [1, 2]},
}


@dataclass(frozen=True)
class Kind:
    """A model kind: how to save it, and the JSON payloads it is asked (CSV too if tabular)."""

    save: Callable[[Path, bool], None]
    payloads: dict[str, Any]
    tabular: bool = True


KINDS = {
    "string-labels": Kind(_labels, TABULAR),
    "predict-proba": Kind(lambda f, e: _labels(f, e, pyfunc_predict_fn="predict_proba"), TABULAR),
    "predict-log-proba": Kind(
        lambda f, e: _labels(f, e, pyfunc_predict_fn="predict_log_proba"), TABULAR
    ),
    "two-outputs": Kind(_two_outputs, TABULAR),
    "hist-gradient-boosting": Kind(_hist_gradient_boosting, TABULAR),
    "type-hinted-bytes": Kind(_bytes, BYTES, tabular=False),
}


@dataclass(frozen=True)
class Served:
    kind: Kind
    native: ServerProcess
    mlflow: ServerProcess


@pytest.fixture(
    scope="module",
    params=[(name, example) for name in KINDS for example in (True, False)],
    ids=[f"{name}-{'example' if example else 'no-example'}" for name in KINDS
         for example in (True, False)],
)  # fmt: skip
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    name, example = request.param
    folder = tmp_path_factory.mktemp("zoo")
    kind = KINDS[name]
    kind.save(folder / "model", example)
    tracking = f"sqlite:///{folder / 'unused.db'}"
    native = start_model_server(str(folder / "model"), tracking, folder / "native.log")
    reference = start_model_server(
        str(folder / "model"), tracking, folder / "mlflow.log", engine="mlflow"
    )
    try:
        native.wait_healthy()
        reference.wait_healthy()
        yield Served(kind, native, reference)
    finally:
        native.stop()
        reference.stop()


PATHS = {
    "string-labels": "fast path: scikit-learn's predict",
    "predict-proba": "MLflow's path: the model answers predict_proba",
    "predict-log-proba": "MLflow's path: the model answers predict_log_proba",
    "two-outputs": "fast path: scikit-learn's predict",
    "hist-gradient-boosting": "fast path: scikit-learn's predict",
    "type-hinted-bytes": "MLflow's path: the python_function flavor",
}


@pytest.mark.parametrize("name", list(KINDS))
async def test_each_kind_starts_and_answers_as_mlflow_s_handler(
    name: str, tmp_path: Path, aiohttp_client: ClientFactory
) -> None:
    kind = KINDS[name]
    kind.save(tmp_path / "model", True)
    model = load(resolve(str(tmp_path / "model")))
    assert model.warm_up.startswith("warm"), model.warm_up
    app = create_app(
        ServerSettings(model_uri=model.resolved.requested_uri), model.resolved,
        loader=lambda _resolved: model,
    )  # fmt: skip
    client = await aiohttp_client(app)
    await asyncio.wait_for(app[STATE].settled.wait(), 30)
    for payload in kind.payloads.values():
        body = json.dumps(payload).encode()
        answer = await client.post("/invocations", data=body, headers={"Content-Type": JSON})
        expected = score_with_mlflow(model, body, JSON)
        assert (answer.status, await answer.read()) == (expected.status, expected.body)
    assert (await (await client.get("/metadata")).json())["path"] == PATHS[name]


def _answer(server: ServerProcess, body: bytes, content_type: str) -> tuple[int, str, Any]:
    answer = requests.post(
        f"{server.url}/invocations", data=body, headers={"Content-Type": content_type},
        timeout=60,
    )  # fmt: skip
    return answer.status_code, answer.headers.get("Content-Type", ""), answer.json()


def test_both_engines_answer_every_payload_alike(served: Served) -> None:
    cases = {name: (json.dumps(payload).encode(), "application/json")
             for name, payload in served.kind.payloads.items()}  # fmt: skip
    if served.kind.tabular:
        cases["csv"] = (CSV, "text/csv")
    for name, (body, content_type) in cases.items():
        native = _answer(served.native, body, content_type)
        reference = _answer(served.mlflow, body, content_type)
        assert native[:2] == reference[:2], (name, native, reference)
        assert same_answer(native[2], reference[2]), (name, native, reference)
        assert (native[0] == 200) == (name in ANSWERED), (name, native)
