"""Predictions written as a V2 inference answer, as MLServer's MLflow runtime writes them.

The engine's predictions arrive as plain values: the fast path's array as a list, or MLflow's
path's `predictions` decoded from its JSON answer. Both paths go through `v2_answer`, so they
answer alike. The shapes follow MLServer (the reference peer), field by field:

- records (a data frame) are one output per column, named by it, shape [n, 1], with
  `content_type: str` on text columns and `pd` on the answer;
- a list of text from a model whose signature declares columns (a type-hinted `list[str]`)
  is one `BYTES` output with `content_type: str`;
- anything else is one tensor named `output-1` (MLServer's name), its shape with the batch
  dimension first ([n] becomes [n, 1]), `content_type: np`; named tensors (`dict`) one each.

Datatypes come from the signature's outputs when it declares them (an XGBoost regressor's
float32 stays FP32, as MLServer says), else from the values. NaN is written as null.
"""

from __future__ import annotations

import math
from typing import Any

from model_server.v2.requests import V2RequestError

OUTPUT_NAME = "output-1"
"""MLServer names a model's one unnamed output so in its answers."""
COLUMN_TYPES = {
    "double": "FP64", "float": "FP32", "long": "INT64", "integer": "INT32",
    "boolean": "BOOL", "string": "BYTES", "binary": "BYTES", "datetime": "BYTES",
}  # fmt: skip
TENSOR_TYPES = {
    "float64": "FP64", "float32": "FP32", "float16": "FP16", "int64": "INT64",
    "int32": "INT32", "int16": "INT16", "int8": "INT8", "uint64": "UINT64",
    "uint32": "UINT32", "uint16": "UINT16", "uint8": "UINT8", "bool": "BOOL",
    "str": "BYTES", "object": "BYTES", "bytes": "BYTES",
}  # fmt: skip


def declared_type(spec: dict[str, Any]) -> str | None:
    """Return the V2 datatype a signature entry declares (a column's or a tensor's), or None."""
    if spec.get("type") == "tensor":
        return TENSOR_TYPES.get(str(spec.get("tensor-spec", {}).get("dtype")))
    return COLUMN_TYPES.get(str(spec.get("type")))


def v2_answer(
    predictions: Any,
    output_specs: list[dict[str, Any]],
    *,
    model_name: str,
    model_version: str,
    request_id: str,
) -> dict[str, Any]:
    """Write predictions as an inference answer (raise V2RequestError if V2 cannot hold them)."""
    declared = {str(spec.get("name")): declared_type(spec) for spec in output_specs}
    single = declared_type(output_specs[0]) if len(output_specs) == 1 else None
    outputs: list[dict[str, Any]]
    if (
        isinstance(predictions, list)
        and predictions
        and all(isinstance(row, dict) for row in predictions)
    ):
        content_type = "pd"
        names = list(predictions[0])
        outputs = [_column(name, [row.get(name) for row in predictions], declared.get(name))
                   for name in names]  # fmt: skip
    elif isinstance(predictions, dict):
        content_type = "dict"
        outputs = [_tensor(str(name), value, declared.get(str(name)))
                   for name, value in predictions.items()]  # fmt: skip
    elif _texts(predictions) and output_specs and output_specs[0].get("type") != "tensor":
        content_type = "str"
        outputs = [_text_output(predictions)]
    else:
        content_type = "np"
        outputs = [_tensor(OUTPUT_NAME, predictions, single)]
    return {
        "model_name": model_name,
        "model_version": model_version,
        "id": request_id,
        "parameters": {"content_type": content_type},
        "outputs": outputs,
    }


def _texts(predictions: Any) -> bool:
    return isinstance(predictions, list) and all(isinstance(value, str) for value in predictions)


def _text_output(values: list[str]) -> dict[str, Any]:
    return {
        "name": OUTPUT_NAME, "shape": [len(values), 1], "datatype": "BYTES",
        "parameters": {"content_type": "str"}, "data": values,
    }  # fmt: skip


def _column(name: str, values: list[Any], declared: str | None) -> dict[str, Any]:
    datatype = declared or _inferred(values, name)
    output: dict[str, Any] = {"name": name, "shape": [len(values), 1], "datatype": datatype}
    if datatype == "BYTES":
        output["parameters"] = {"content_type": "str"}
    output["data"] = _nulls_for_nan(values)
    return output


def _tensor(name: str, value: Any, declared: str | None) -> dict[str, Any]:
    if not isinstance(value, list):
        value = [value]  # a scalar answer is one row
    shape, flat = _shape_and_values(value, name)
    if len(shape) == 1:
        shape.append(1)  # MLServer's batch dimension: [n] is [n, 1]
    return {
        "name": name, "shape": shape, "datatype": declared or _inferred(flat, name),
        "parameters": {"content_type": "np"}, "data": _nulls_for_nan(flat),
    }  # fmt: skip


def _shape_and_values(value: list[Any], name: str) -> tuple[list[int], list[Any]]:
    """Return a nested list's shape and its values flattened; refuse ragged lists."""
    shape = [len(value)]
    level = value
    while level and isinstance(level[0], list):
        width = len(level[0])
        if not all(isinstance(item, list) and len(item) == width for item in level):
            raise _inexpressible(name, "its rows differ in length")
        shape.append(width)
        level = [item for items in level for item in items]
    if any(isinstance(item, list | dict) for item in level):
        raise _inexpressible(name, "it mixes nested and plain values")
    return shape, level


def _inferred(values: list[Any], name: str) -> str:
    """Name the datatype that holds every value (null counts as a float's NaN)."""
    kinds = {type(value) for value in values if value is not None}
    if not kinds:
        return "FP64"
    if kinds == {bool}:
        return "BOOL"
    if kinds == {int}:
        return "INT64" if all(v is not None for v in values) else "FP64"
    if kinds <= {int, float}:
        return "FP64"
    if kinds == {str}:
        return "BYTES"
    found = sorted(kind.__name__ for kind in kinds)
    raise _inexpressible(name, f"it holds values of several kinds ({', '.join(found)})")


def _nulls_for_nan(values: list[Any]) -> list[Any]:
    if any(isinstance(value, float) and math.isnan(value) for value in values):
        return [None if isinstance(v, float) and math.isnan(v) else v for v in values]
    return values


def _inexpressible(name: str, why: str) -> V2RequestError:
    message = f"output {name!r} cannot be written as a V2 tensor: {why}; use /invocations"
    return V2RequestError(message, status=422)
