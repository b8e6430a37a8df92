"""The fast path is taken only when it answers as MLflow's path, and reads only plain rows.

`choose_fast_path` checks each candidate against MLflow's own handler on the input example
and on rows drawn from the signature; these tests hand it wrong candidates (through the
compiler it asks) and a parser the rows it must take and refuse.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model_server.fastpath import choose as fastpath
from model_server.fastpath.parsing import Columns, plain_rows
from model_server.model.loading import LoadedModel, load, resolve
from tests.zoo import KINDS


@pytest.fixture(scope="module")
def labels_model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    folder = tmp_path_factory.mktemp("labels") / "model"
    KINDS["string-labels"].save(folder, True)
    return load(resolve(str(folder)))


def _wrong_beyond(limit: float) -> Any:
    """A compiler whose predictor is right inside [-limit, limit] and wrong beyond it."""

    def compile_estimator(estimator: Any, method: str, *_args: Any) -> Any:
        def predict(rows: np.ndarray) -> np.ndarray:
            answer: np.ndarray = getattr(estimator, method)(rows)
            if np.abs(rows).max() > limit:
                answer = answer[::-1].copy()
            return answer

        return predict

    return compile_estimator


@pytest.mark.filterwarnings("ignore:X does not have valid feature names:UserWarning")
def test_a_compiled_predictor_wrong_only_on_drawn_rows_is_not_taken(
    labels_model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Right on the example (values under 10), wrong on rows drawn beyond it.
    monkeypatch.setattr(fastpath, "compile_estimator", _wrong_beyond(10.0))
    fast, path, _probes = fastpath.choose_fast_path(labels_model)
    assert path == "fast path: scikit-learn's predict"
    assert fast is not None and not fast.compiled


def test_no_fast_path_when_every_candidate_answers_otherwise(
    labels_model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fastpath, "compile_estimator", lambda *_args: None)
    # The library's own method, handed the rows in reverse order.
    frame_of = fastpath.frame_of
    monkeypatch.setattr(fastpath, "frame_of", lambda rows, columns: frame_of(rows[::-1], columns))
    fast, path, _probes = fastpath.choose_fast_path(labels_model)
    assert fast is None
    assert path == "MLflow's path: the fast path answered otherwise on the example or drawn rows"


def test_a_candidate_that_refuses_every_row_is_not_taken(
    labels_model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(_rows: np.ndarray) -> np.ndarray:
        raise ValueError("no")

    monkeypatch.setattr(fastpath, "compile_estimator", lambda *_args: refuse)
    monkeypatch.setattr(labels_model.pyfunc.get_raw_model(), "predict", refuse)
    fast, path, _probes = fastpath.choose_fast_path(labels_model)
    assert fast is None
    assert path == "MLflow's path: the fast path refused every example and drawn row"


MIXED = Columns(("x", "n", "label"), ("number", "integer", "text"))


@pytest.mark.parametrize(
    "payload",
    [
        {"dataframe_records": [{"x": 1.5, "n": 2, "label": "a"}, {"x": 3, "n": -4, "label": ""}]},
        {"dataframe_split": {"columns": ["label", "x", "n"], "data": [["a", 1.5, 2], ["", 3, -4]]}},
        {"inputs": {"n": [2, -4], "label": ["a", ""], "x": [1.5, 3]}},
        {"instances": [{"x": 1.5, "n": 2, "label": "a"}, {"x": 3, "n": -4, "label": ""}]},
    ],
    ids=["records", "split", "columns", "instances"],
)
def test_rows_with_text_and_whole_numbers_are_read_in_signature_order(payload: Any) -> None:
    rows = plain_rows(json.dumps(payload).encode(), MIXED)
    assert rows is not None and rows.dtype == object
    assert rows.tolist() == [[1.5, 2, "a"], [3, -4, ""]]


@pytest.mark.parametrize(
    "record",
    [
        {"x": 1.5, "n": 2, "label": 3},  # a number in a text column: MLflow turns it into text
        {"x": "1.5", "n": 2, "label": "a"},  # text in a number column
        {"x": 1.5, "n": 2.0, "label": "a"},  # a fraction's notation in a whole-number column
        {"x": True, "n": 2, "label": "a"},
        {"x": None, "n": 2, "label": "a"},
        {"x": 1.5, "n": 2**60, "label": "a"},  # beyond float64's exact integers
        {"x": 1.5, "n": 2},
    ],
)
def test_anything_but_plain_values_is_left_to_mlflow_s_parser(record: dict[str, Any]) -> None:
    assert plain_rows(json.dumps({"dataframe_records": [record]}).encode(), MIXED) is None


def test_numeric_columns_give_float_rows() -> None:
    columns = Columns(("a", "b"), ("number", "integer"))
    rows = plain_rows(b'{"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2]]}}', columns)
    assert rows is not None and rows.dtype == np.float64 and rows.tolist() == [[1.0, 2.0]]


def test_every_zoo_kind_with_columns_says_which_path_and_why(tmp_path: Path) -> None:
    """A tensor signature and a missing signature are MLflow's path, and say so."""
    for name, reason in (("tensor", "the signature names no input columns"),
                         ("no-signature", "the signature names no input columns")):  # fmt: skip
        KINDS[name].save(tmp_path / name, False)
        model = load(resolve(str(tmp_path / name)))
        assert (model.fast_path, model.path) == (None, f"MLflow's path: {reason}")
