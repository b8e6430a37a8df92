"""Predictions of any model: answers read per output, buckets and classes cut from a profile."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from contracts.metrics import SINGLE_OUTPUT
from contracts.payloads import PredictionsProfile
from contracts.routing import PredictionOutput
from controller.predictionbuckets import MIN_ROWS, cut
from router.telemetry.predictions import outputs_in, outputs_of, predictions_of


@pytest.mark.parametrize(
    ("answer", "outputs"),
    [
        ({"predictions": [1.5, 2, -3e-4]}, {SINGLE_OUTPUT: [1.5, 2.0, -3e-4]}),
        ({"predictions": ["cat", "dog", True]}, {SINGLE_OUTPUT: ["cat", "dog", "true"]}),
        ({"predictions": [{"label": "cat", "p": 0.9}, {"label": "eel", "p": 0.2}]},
         {"label": ["cat", "eel"], "p": [0.9, 0.2]}),
        ({"predictions": [[0.1, 0.9], [0.7, 0.3]]}, {"0": [0.1, 0.7], "1": [0.9, 0.3]}),
        ({"predictions": {"price": [10, 12], "band": ["low", "high"]}},
         {"price": [10.0, 12.0], "band": ["low", "high"]}),
        ({"predictions": [None, 2.0]}, {SINGLE_OUTPUT: [2.0]}),
        ({"predictions": []}, None),
        ({"error_code": "BAD_REQUEST"}, None),
        ([1, 2], None),
    ],
    ids=["numbers", "labels", "records", "arrays", "columns", "nulls-dropped", "empty",
         "error", "not-an-object"],
)  # fmt: skip
def test_every_shape_of_mlflow_answer_is_read_per_output(
    answer: object, outputs: dict[str, list[object]] | None
) -> None:
    assert outputs_of(json.dumps(answer).encode()) == outputs


def test_the_plain_fast_path_and_the_parser_agree() -> None:
    assert outputs_of(b'{"predictions": [1.5, 2, NaN]}') == {
        SINGLE_OUTPUT: [1.5, 2.0, pytest.approx(float("nan"), nan_ok=True)]
    }
    assert outputs_of(b'{"predictions": [1_000]}') is None  # not JSON
    assert predictions_of(b'{"predictions": [1.5, 2]}') == [1.5, 2.0]
    assert predictions_of(b'{"predictions": ["cat"]}') is None
    assert predictions_of(json.dumps({"predictions": [{"a": 1}]}).encode()) is None


def profile(version: str = "1", **outputs: dict[str, object]) -> PredictionsProfile:
    document = {"instance_id": "r1", "stable_version": version, "outputs": outputs}
    return PredictionsProfile.model_validate(document)


def numeric(
    deciles: list[float], rows: int = 500, labels: dict[str, int] | None = None
) -> dict[str, object]:
    return {"rows": rows, "numeric": True, "deciles": deciles, "labels": labels}


def test_numbers_are_cut_at_their_deciles_on_any_scale() -> None:
    deciles = [0.1712345678 + 0.0377 * i for i in range(9)]
    predictions = cut([profile(predictions=numeric(deciles))], "1")
    assert predictions is not None and predictions.version == "1"
    edges = predictions.outputs[SINGLE_OUTPUT].edges
    assert edges is not None and len(edges) == 9 and edges[0] == 0.171235
    prices = cut([profile(price=numeric([1e5 * (i + 1) for i in range(9)]))], "1")
    assert prices is not None and prices.outputs["price"].edges == [1e5 * (i + 1) for i in range(9)]


def test_labels_and_a_few_whole_numbers_are_classes() -> None:
    labels = {"rows": 300, "numeric": False, "deciles": [], "labels": {"eel": 30, "cat": 270}}
    whole = numeric([0, 0, 0, 1, 1, 1, 2, 2, 2], labels={"0": 100, "2": 100, "1": 100, "10": 1})
    predictions = cut([profile(label=labels, klass=whole)], "1")
    assert predictions is not None
    assert predictions.outputs["label"].classes == ["cat", "eel"]
    assert predictions.outputs["klass"].classes == ["0", "1", "2", "10"]


def test_nothing_is_cut_from_too_few_rows_another_version_or_countless_labels() -> None:
    few = numeric([1.0] * 9, rows=MIN_ROWS - 1)
    assert cut([profile(predictions=few)], "1") is None
    assert cut([profile("2", predictions=numeric([1.0] * 9))], "1") is None
    countless = {"rows": 900, "numeric": False, "deciles": [], "labels": None}
    assert cut([profile(text=countless)], "1") is None


def test_the_router_that_saw_most_is_cut_from() -> None:
    small = profile(predictions=numeric([1.0 + i for i in range(9)], rows=100))
    large = profile(predictions=numeric([5.0 + i for i in range(9)], rows=900))
    predictions = cut([small, large], "1")
    assert predictions is not None and predictions.outputs[SINGLE_OUTPUT].edges == [
        5.0 + i for i in range(9)
    ]


def test_the_routing_file_refuses_bad_buckets_naming_the_problem() -> None:
    with pytest.raises(ValidationError, match="either edges"):
        PredictionOutput()
    with pytest.raises(ValidationError, match="rise strictly"):
        PredictionOutput(edges=[1.0, 1.0])
    with pytest.raises(ValidationError, match="finite"):
        PredictionOutput(edges=[float("inf")])
    with pytest.raises(ValidationError, match="distinct"):
        PredictionOutput(classes=["a", "a"])


V2_ANSWERS = {
    "ours": {"model_name": "m", "model_version": "1", "id": "a", "parameters":
             {"content_type": "np"}, "outputs": [{"name": "output-1", "shape": [2, 1],
             "datatype": "FP64", "parameters": {"content_type": "np"}, "data": [1.5, 2]}]},
    "flat shape": {"outputs": [{"name": "o", "shape": [3], "datatype": "INT64",
                                "data": [1, 0, 1]}]},
    "two columns": {"outputs": [{"name": "o", "shape": [2, 2], "datatype": "FP64",
                                 "data": [1, 2, 3, 4]}]},
    "a frame": {"parameters": {"content_type": "pd"}, "outputs": [
        {"name": "total", "shape": [2, 1], "datatype": "FP64", "data": [1.0, 2.0]}]},
    "two outputs": {"outputs": [
        {"name": "a", "shape": [1, 1], "datatype": "FP64", "data": [1.0]},
        {"name": "b", "shape": [1, 1], "datatype": "BYTES", "data": ["x"]}]},
    "labels": {"outputs": [{"name": "o", "shape": [2, 1], "datatype": "BYTES",
                            "data": ["cat", "dog"]}]},
    "an id that reads as a key": {"id": "name", "outputs": [
        {"name": "o", "shape": [1, 1], "datatype": "FP64", "data": [3.0]}]},
    "an id with brackets": {"id": '"data": [9, 9]}]}', "outputs": [
        {"name": "o", "shape": [1, 1], "datatype": "FP64", "data": [3.0]}]},
}  # fmt: skip


@pytest.mark.parametrize("case", list(V2_ANSWERS))
@pytest.mark.parametrize("compact", [False, True], ids=["spaced", "compact"])
def test_v2_answers_read_as_the_json_parser_reads_them(case: str, compact: bool) -> None:
    """The router's quick read of a one-output V2 answer (no JSON parser) agrees with the
    parser on every shape, and leaves whatever it is unsure of to it."""
    document = V2_ANSWERS[case]
    separators = (",", ":") if compact else (", ", ": ")
    body = json.dumps(document, separators=separators).encode()
    assert outputs_of(body) == outputs_in(document), case
    if case in ("ours", "flat shape", "an id that reads as a key"):
        assert outputs_in(document) is not None
        assert list(outputs_in(document) or {}) == ["predictions"]
