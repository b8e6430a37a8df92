"""A scoring answer's predictions, whichever protocol answered.

MLflow's scoring server answers `{"predictions": ...}`; a V2 server answers `{"outputs": [...]}`
(the Open Inference Protocol). A V2 answer's outputs are read as the predictions an MLflow
answer of the same model would carry, so that the prediction gate, shadow comparison and labels
judge a V2 variant exactly as an MLflow one, and the prediction log's readers take either.
"""

from __future__ import annotations

from typing import Any


def predictions_in(answer: Any) -> Any:
    """Return an answer's predictions: MLflow's `predictions`, or a V2 answer's outputs."""
    if not isinstance(answer, dict):
        return None
    if "predictions" in answer:
        return answer["predictions"]
    return mlflow_shaped(answer)


def mlflow_shaped(answer: Any) -> Any:
    """Return a V2 answer's outputs shaped as MLflow's `predictions` for the same output.

    One output of shape [n] or [n, 1] is a list of n values; one of shape [n, k] a list of n
    rows; several outputs, or any answered as a data frame's columns (`content_type: pd`, as
    MLServer and our model server answer a data frame), a list of n records. None when the
    answer carries no readable outputs.
    """
    if not isinstance(answer, dict):
        return None
    outputs = answer.get("outputs")
    if not isinstance(outputs, list) or not outputs:
        return None
    columns: dict[str, list[Any]] = {}
    for output in outputs:
        if not isinstance(output, dict) or not isinstance(output.get("data"), list):
            return None
        shape, data = output.get("shape"), output["data"]
        if len(outputs) == 1 and not _frame(answer):
            return _rows(data, shape)
        columns[str(output.get("name", len(columns)))] = data
    lengths = {len(column) for column in columns.values()}
    if len(lengths) != 1:
        return None
    names = list(columns)
    return [dict(zip(names, row, strict=True)) for row in zip(*columns.values(), strict=True)]


def _frame(answer: dict[str, Any]) -> bool:
    parameters = answer.get("parameters")
    return isinstance(parameters, dict) and parameters.get("content_type") == "pd"


def _rows(data: list[Any], shape: Any) -> list[Any]:
    """Shape a flat output: a list of values, or a list of rows for [n, k] with k > 1."""
    if (
        isinstance(shape, list)
        and len(shape) == 2
        and all(isinstance(size, int) for size in shape)
        and shape[1] > 1
        and shape[0] * shape[1] == len(data)
    ):
        width = shape[1]
        return [data[start : start + width] for start in range(0, len(data), width)]
    return data  # a list of values, or rows nested already (the protocol allows either)
