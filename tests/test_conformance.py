"""One payload matrix against both engines serving the same registered model.

Status codes and `error_code`s must match, and predictions must be equal to 1e-9. Where the
native engine deliberately differs, the case names the difference and why.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests

from tests.conftest import TrainedRegistry
from tests.servers import ServerProcess, start_model_server

pytestmark = pytest.mark.slow  # real MLflow, model servers or whole systems

ROW = {"hours_studied": 6.5, "sleep_hours": 7.0, "attendance_percent": 90.0, "previous_scores": 85}
ROWS = [
    {**ROW, "hours_studied": float(hours), "previous_scores": 40 + 5 * hours}
    for hours in range(1, 6)
]
COLUMNS = list(ROW)
JSON = "application/json"


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


def _split(rows: list[dict[str, float]], columns: list[str]) -> dict[str, object]:
    return {"columns": columns, "data": [[row[c] for c in columns] for row in rows]}


def _csv(rows: list[dict[str, float]]) -> bytes:
    lines = [",".join(COLUMNS)] + [",".join(str(row[c]) for c in COLUMNS) for row in rows]
    return ("\n".join(lines) + "\n").encode()


@dataclass(frozen=True)
class Case:
    """One request of the matrix; `differs` says why the engines deliberately disagree."""

    name: str
    body: bytes
    content_type: str | None = JSON
    differs: str = ""


BIG = [{**ROW, "hours_studied": 1 + (i % 110) / 10} for i in range(20_000)]
CASES = [
    Case("records-one", _json({"dataframe_records": [ROW]})),
    Case("records-many", _json({"dataframe_records": ROWS})),
    Case("split", _json({"dataframe_split": _split(ROWS, COLUMNS)})),
    Case("split-reordered", _json({"dataframe_split": _split(ROWS, COLUMNS[::-1])})),
    Case(
        "split-index",
        _json({"dataframe_split": {**_split(ROWS, COLUMNS), "index": [5, 6, 7, 8, 9]}}),
    ),
    Case(
        "split-odd-columns",
        _json({"dataframe_split": {"columns": [1, [2], "a", None], "data": [[1, 2, 3, 4]]}}),
        differs="MLflow's parsing crashes on a list as a column name (500); native answers 400",
    ),
    Case("split-extra-key", _json({"dataframe_split": {**_split(ROWS, COLUMNS), "x": 1}})),
    Case("instances", _json({"instances": ROWS})),
    Case("inputs-columns", _json({"inputs": {c: [r[c] for r in ROWS] for c in COLUMNS}})),
    Case("inputs-records", _json({"inputs": ROWS})),
    Case("params", _json({"dataframe_records": ROWS, "params": {"threshold": 0.5}})),
    Case("unknown-top-key", _json({"dataframe_records": ROWS, "comment": "hi"})),
    Case("csv", _csv(ROWS), "text/csv"),
    Case("csv-charset", _csv(ROWS), "text/csv; charset=utf-8"),
    Case("csv-malformed", b"hours_studied,sleep_hours\n1,2,3,4\n\x00", "text/csv"),
    Case("json-charset", _json({"dataframe_records": ROWS}), "application/json; charset=UTF-8"),
    Case("json-latin1", _json({"dataframe_records": ROWS}), "application/json; charset=latin-1"),
    Case("json-unknown-parameter", _json({"dataframe_records": ROWS}), "application/json; v=2"),
    Case("wrong-content-type", _json({"dataframe_records": ROWS}), "text/plain"),
    Case(
        "missing-content-type",
        _json({"dataframe_records": ROWS}),
        None,
        differs="MLflow crashes on the missing header (500); native answers 415 naming it",
    ),
    Case("malformed-json", b'{"dataframe_records": [{"hours_studied": 1,'),
    Case("not-utf8", b'{"dataframe_records": "\xff\xfe"}'),
    Case("top-level-list", _json([ROW])),
    Case("top-level-number", b"42"),
    Case("no-format-key", _json({"data": ROWS})),
    Case("two-format-keys", _json({"dataframe_records": ROWS, "instances": ROWS})),
    Case("records-not-a-list", _json({"dataframe_records": ROW})),
    Case(
        "missing-column",
        _json({"dataframe_records": [{k: v for k, v in ROW.items() if k != "sleep_hours"}]}),
    ),
    Case("extra-column", _json({"dataframe_records": [{**ROW, "student_id": "S001"}]})),
    Case("string-value", _json({"dataframe_records": [{**ROW, "hours_studied": "six"}]})),
    Case("numeric-string", _json({"dataframe_records": [{**ROW, "hours_studied": "6.5"}]})),
    Case("boolean-value", _json({"dataframe_records": [{**ROW, "hours_studied": True}]})),
    Case(
        "integers-for-doubles", _json({"dataframe_records": [{k: int(v) for k, v in ROW.items()}]})
    ),
    Case("mixed-int-float", _json({"dataframe_records": [ROW, {**ROW, "previous_scores": 85.0}]})),
    Case("empty-records", _json({"dataframe_records": []})),
    Case("empty-split", _json({"dataframe_split": {"columns": COLUMNS, "data": []}})),
    Case("empty-body", b""),
    Case("huge-float", _json({"dataframe_records": [{**ROW, "hours_studied": 1e308}]})),
    Case(
        "huge-float-among-good", _json({"dataframe_records": [ROW, {**ROW, "sleep_hours": 1e300}]})
    ),
    Case("huge-integer", _json({"dataframe_records": [{**ROW, "previous_scores": 10**30}]})),
    Case("beyond-double", _json({"dataframe_records": [ROW]}).replace(b"6.5", b"1e999")),
    Case("nan", _json({"dataframe_records": [ROW]}).replace(b"6.5", b"NaN")),
    Case("null", _json({"dataframe_records": [{**ROW, "hours_studied": None}]})),
    Case("nested-value", _json({"dataframe_records": [{**ROW, "hours_studied": [1, 2]}]})),
    Case(
        "deeply-nested",
        b'{"dataframe_records": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        differs="Python's JSON parser hits its recursion limit; MLflow answers 500, native 400",
    ),
    Case("huge-body-20000-rows", _json({"dataframe_records": BIG})),
]


@dataclass(frozen=True)
class Engines:
    """Both engines serving one registered version."""

    native: ServerProcess
    mlflow: ServerProcess
    version: str


@pytest.fixture(scope="module", params=["champion", "challenger"])
def engines(request: pytest.FixtureRequest, trained_registry: TrainedRegistry) -> Iterator[Engines]:
    """Start both engines on the linear champion, then on the random-forest challenger."""
    alias = request.param
    uri = f"models:/StudentExamPredictor@{alias}"
    tracking = trained_registry.settings.tracking_uri
    logs = trained_registry.state / "logs"
    native = start_model_server(uri, tracking, logs / f"native-{alias}.log")
    reference = start_model_server(uri, tracking, logs / f"mlflow-{alias}.log", engine="mlflow")
    try:
        native.wait_healthy()
        reference.wait_healthy()
        version = {"champion": trained_registry.champion, "challenger": trained_registry.challenger}
        yield Engines(native, reference, version[alias].version)
    finally:
        native.stop()
        reference.stop()


def _post(server: ServerProcess, case: Case) -> requests.Response:
    headers = {} if case.content_type is None else {"Content-Type": case.content_type}
    session = requests.Session()
    request = requests.Request("POST", f"{server.url}/invocations", data=case.body, headers=headers)
    prepared = session.prepare_request(request)
    if case.content_type is None:
        prepared.headers.pop("Content-Type", None)
    return session.send(prepared, timeout=60)


def _error_code(response: requests.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("error_code") if isinstance(body, dict) else None


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_both_engines_answer_alike(engines: Engines, case: Case) -> None:
    """Same status and error code from both engines, and equal predictions on success."""
    native = _post(engines.native, case)
    reference = _post(engines.mlflow, case)
    assert native.headers["X-Model-Version"] == engines.version
    if case.differs:
        assert native.status_code != reference.status_code, case.differs
        assert 400 <= native.status_code < 500
        assert reference.status_code == 500
        assert native.json()["error_code"] == "BAD_REQUEST"
        return
    assert native.status_code == reference.status_code, (native.text[:500], reference.text[:500])
    assert _error_code(native) == _error_code(reference)
    assert native.headers["Content-Type"] == reference.headers["Content-Type"]
    if reference.status_code == 200:
        expected = reference.json()["predictions"]
        got = native.json()["predictions"]
        assert len(got) == len(expected)
        assert got == pytest.approx(expected, abs=1e-9, nan_ok=True)
