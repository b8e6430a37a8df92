"""A V2 inference request read and checked, then turned into what the engine already answers.

The request is checked whole before anything is predicted, and each problem is a 400 naming
the input and the field. It is then handed to the engine this server already has: its rows to
the fast path when the model has one and they are plain, else an MLflow request body
(`dataframe_split` for a column-based model, `inputs` for a tensor-based one) to MLflow's own
path, which keeps MLflow's schema enforcement and errors. So both protocols answer from the
same code, and alike.

How inputs read follows MLServer's MLflow runtime (the reference peer): the request's
`parameters.content_type` when given, else the model's from its signature (`pd` for
columns, `np` for one unnamed tensor, `dict` for named tensors). With `pd` each input is one
column, of shape [n] or [n, 1]; as an extension, one 2-D input [n, k] is taken as the
signature's k columns in order. Every other request parameter is passed to the model as
MLflow's `params`, as MLServer does.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from contracts.v2 import DATATYPES
from model_server.fastpath.parsing import ACCEPTS, Columns

ContentType = Literal["pd", "np", "dict"]
RESERVED_PARAMETERS = frozenset({"content_type", "headers"})
"""Request parameters that are the protocol's own, not the model's `params`."""
INTEGER_TYPES = frozenset(t for t in DATATYPES if t.startswith(("INT", "UINT")))


class V2RequestError(Exception):
    """A request that cannot be answered: the status and the message of the `{"error"}` body."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.status = message, status


@dataclass(frozen=True)
class Tensor:
    """One input: its name, datatype, shape and values (flattened, checked against both)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    values: list[Any]

    @property
    def rows(self) -> int:
        """The batch size: the first dimension."""
        return self.shape[0] if self.shape else 1

    def nested(self) -> Any:
        """Nest the values by the shape, as MLflow's `inputs` takes a tensor."""
        nested: Any = self.values
        for size in reversed(self.shape[1:]):
            nested = [nested[start : start + size] for start in range(0, len(nested), size)]
        return nested


@dataclass(frozen=True)
class V2Request:
    """A checked request: its inputs, how they read, its id and the model's params."""

    inputs: tuple[Tensor, ...]
    content_type: ContentType
    request_id: str | None
    params: dict[str, Any]


def read_request(body: bytes, default: ContentType) -> V2Request:
    """Parse and check a request body; raise V2RequestError naming what is wrong."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as error:
        raise V2RequestError(f"the body is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise V2RequestError("the body must be a JSON object with `inputs`")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise V2RequestError("`inputs` must be a non-empty list of tensors")
    parameters = document.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise V2RequestError("`parameters` must be an object")
    asked = parameters.get("content_type", default)
    if asked not in ("pd", "np", "dict"):
        raise V2RequestError(
            f"parameters.content_type {asked!r} is not supported: use pd, np or dict"
        )
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise V2RequestError("`id` must be a string")
    inputs = tuple(_tensor(index, raw) for index, raw in enumerate(raw_inputs))
    names = [tensor.name for tensor in inputs]
    if len(set(names)) != len(names):
        raise V2RequestError(f"input names must be distinct, got {names}")
    params = {k: v for k, v in parameters.items() if k not in RESERVED_PARAMETERS}
    return V2Request(inputs, asked, request_id, params)


def _tensor(index: int, raw: Any) -> Tensor:
    where = f"inputs[{index}]"
    if not isinstance(raw, dict):
        raise V2RequestError(f"{where} must be an object with name, shape, datatype and data")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise V2RequestError(f"{where}.name must be a non-empty string")
    where = f"input {name!r}"
    datatype = raw.get("datatype")
    if datatype not in DATATYPES:
        raise V2RequestError(f"{where}: datatype {datatype!r} is not one of {sorted(DATATYPES)}")
    shape = raw.get("shape")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(type(size) is int and size >= 0 for size in shape)
    ):
        raise V2RequestError(f"{where}: shape must be a list of sizes, got {shape!r}")
    values = _flattened(raw.get("data"), where)
    if len(values) != math.prod(shape):
        message = f"{where}: shape {shape} holds {math.prod(shape)} values, data has {len(values)}"
        raise V2RequestError(message)
    _check_values(values, datatype, where)
    return Tensor(name, datatype, tuple(shape), values)


def _flattened(data: Any, where: str) -> list[Any]:
    if not isinstance(data, list):
        raise V2RequestError(f"{where}: data must be a list")
    if not any(isinstance(value, list) for value in data):
        return data
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


def _check_values(values: list[Any], datatype: str, where: str) -> None:
    if datatype == "BYTES":
        wrong = next((v for v in values if not isinstance(v, str)), None)
        expected = "strings"
    elif datatype == "BOOL":
        wrong = next((v for v in values if not isinstance(v, bool)), None)
        expected = "true or false"
    elif datatype in INTEGER_TYPES:
        wrong = next((v for v in values if type(v) is not int), None)
        expected = "whole numbers"
    else:
        wrong = next((v for v in values if type(v) not in (int, float)), None)
        expected = "numbers"
    if wrong is not None:
        raise V2RequestError(f"{where}: {datatype} data must be {expected}, got {wrong!r}")


def columns_of(request: V2Request, signature_columns: list[str]) -> dict[str, list[Any]]:
    """Read `pd` inputs as named columns of equal length (in the request's order)."""
    inputs = request.inputs
    if len(inputs) == 1 and len(inputs[0].shape) == 2 and inputs[0].shape[1] > 1:
        return _split_matrix(inputs[0], signature_columns)
    columns: dict[str, list[Any]] = {}
    for tensor in inputs:
        if len(tensor.shape) > 2 or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
            message = f"input {tensor.name!r}: a column needs shape [n] or [n, 1]"
            raise V2RequestError(f"{message}, got {list(tensor.shape)}")
        columns[tensor.name] = tensor.values
    lengths = {len(column) for column in columns.values()}
    if len(lengths) != 1:
        raise V2RequestError(f"inputs must have the same number of rows, got {sorted(lengths)}")
    if 0 in lengths:
        raise V2RequestError("inputs hold no rows")
    return columns


def _split_matrix(tensor: Tensor, signature_columns: list[str]) -> dict[str, list[Any]]:
    """Take one [n, k] input as the signature's k columns, in the signature's order."""
    rows, width = tensor.shape
    if len(signature_columns) != width:
        message = f"input {tensor.name!r} has {width} columns"
        wanted = f"the model's signature names {len(signature_columns)}: {signature_columns}"
        raise V2RequestError(f"{message}; {wanted}")
    if rows == 0:
        raise V2RequestError("inputs hold no rows")
    values = tensor.values
    return {name: values[index::width] for index, name in enumerate(signature_columns)}


def mlflow_body(
    request: V2Request, columns: dict[str, list[Any]] | None, *, one_unnamed_column: bool
) -> bytes:
    """Write the request as MLflow's scoring server takes it (`columns`: read as `pd`).

    A model whose signature is one unnamed column (a type-hinted `list[str]`) takes a plain
    list of values (`inputs`), as MLflow requires of it; other columns go as a data frame.
    """
    document: dict[str, Any]
    if columns is not None and one_unnamed_column and len(columns) == 1:
        document = {"inputs": next(iter(columns.values()))}
    elif columns is not None:
        names = list(columns)
        rows = [list(row) for row in zip(*columns.values(), strict=True)]
        document = {"dataframe_split": {"columns": names, "data": rows}}
    elif request.content_type == "np":
        if len(request.inputs) != 1:
            found = len(request.inputs)
            raise V2RequestError(f"content_type np takes one input tensor, got {found}")
        document = {"inputs": request.inputs[0].nested()}
    else:
        document = {"inputs": {tensor.name: tensor.nested() for tensor in request.inputs}}
    if request.params:
        document["params"] = request.params
    return json.dumps(document).encode()


def fast_rows(columns: dict[str, list[Any]], fast: Columns) -> np.ndarray | None:
    """Return the columns as the fast path's rows, or None if they are not exactly its input."""
    if columns.keys() != set(fast.names):
        return None
    ordered = [columns[name] for name in fast.names]
    for kind, column in zip(fast.kinds, ordered, strict=True):
        accept = ACCEPTS[kind]
        if not all(accept(value) for value in column):
            return None
    dtype = np.float64 if fast.numeric else object
    return np.array(ordered, dtype=dtype).T.copy()
