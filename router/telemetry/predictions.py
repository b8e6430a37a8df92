"""Reading a model server's scoring answer into predictions per output, cheaply.

MLflow's scoring server answers `{"predictions": ...}` in the shape of the model's output: a
list of numbers or labels (one output), a list of records (a DataFrame: one output per
column), a list of lists (an array: one output per index), or columns of lists. A V2 answer
(`{"outputs": [...]}`) is read as the same predictions (`contracts.v2.mlflow_shaped`), so
the same model's outputs are counted alike whichever protocol its server speaks.
"""

from __future__ import annotations

import json
from typing import Any

from common.predictions import predictions_in
from contracts.metrics import SINGLE_OUTPUT

MAX_PARSED_BODY = 1024 * 1024
"""Larger answers are not read for predictions (the histogram is a sample, not a record)."""
PLAIN_PREFIX, PLAIN_SUFFIX = b'{"predictions": [', b"]}"
V2_SUFFIX = b"]}]}"
"""How a V2 answer ends when its one output's `data` comes last (ours and MLServer's do)."""
Value = float | str
Outputs = dict[str, list[Value]]


def outputs_of(body: bytes) -> Outputs | None:
    """Return each output's predictions (numbers as floats, labels as text), or None."""
    if len(body) > MAX_PARSED_BODY:
        return None
    if body.startswith(PLAIN_PREFIX) and body.endswith(PLAIN_SUFFIX):
        plain = _plain_numbers(body[len(PLAIN_PREFIX) : -len(PLAIN_SUFFIX)])
        if plain is not None:
            return {SINGLE_OUTPUT: plain}
    elif body.endswith(V2_SUFFIX):
        plain = _plain_v2_numbers(body)
        if plain is not None:
            return {SINGLE_OUTPUT: plain}
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return outputs_in(document)


def outputs_in(document: Any) -> Outputs | None:
    """Return each output's predictions in a parsed answer (MLflow's or V2), or None."""
    found = predictions_in(document)
    outputs: Outputs = {}
    if isinstance(found, dict):  # columns
        for name, column in found.items():
            if isinstance(column, list):
                _add(outputs, str(name), column)
    elif isinstance(found, list) and found and all(isinstance(row, dict) for row in found):
        for row in found:
            for name, value in row.items():
                _add(outputs, str(name), [value])
    elif isinstance(found, list) and found and all(isinstance(row, list) for row in found):
        for row in found:
            for index, value in enumerate(row):
                _add(outputs, str(index), [value])
    elif isinstance(found, list):
        _add(outputs, SINGLE_OUTPUT, found)
    return {name: values for name, values in outputs.items() if values} or None


def predictions_of(body: bytes) -> list[float] | None:
    """Return a one-output answer's numbers (what shadow deltas compare), or None."""
    return single_numbers(outputs_of(body))


def single_numbers(outputs: Outputs | None) -> list[float] | None:
    """Return the numbers of a one-output answer, or None."""
    if outputs is None or list(outputs) != [SINGLE_OUTPUT]:
        return None
    values = outputs[SINGLE_OUTPUT]
    numbers = [value for value in values if isinstance(value, float)]
    return numbers if len(numbers) == len(values) else None


def _add(outputs: Outputs, name: str, values: list[Any]) -> None:
    """Keep numbers and labels; drop nulls, nested values and anything else."""
    kept = outputs.setdefault(name, [])
    for value in values:
        if isinstance(value, bool):
            kept.append("true" if value else "false")
        elif isinstance(value, int | float):
            kept.append(float(value))
        elif isinstance(value, str):
            kept.append(value)


def label_of(value: Value) -> str:
    """Name a class: labels as they are, whole numbers without `.0` (0, 1, 2)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _plain_v2_numbers(body: bytes) -> list[Value] | None:
    """Read a V2 answer of one output of shape [n] or [n, 1] without a JSON parser; else None.

    Taken only when the body holds exactly one `"name"`, one `"shape"` and one `"data"` (so one
    output, its data last), no `"pd"`, and a shape of one column; anything else, or a string
    that looks like those (a client's `id` of `"name"`), is left to the JSON parser, which
    reads the same answer the same way (`common.predictions.mlflow_shaped`).
    """
    if body.count(b'"name"') != 1 or body.count(b'"data"') != 1 or b'"pd"' in body:
        return None
    if body.count(b'"shape"') != 1:
        return None
    shape_at = body.find(b'"shape"')
    opened, closed = body.find(b"[", shape_at), body.find(b"]", shape_at)
    if not 0 <= opened < closed:
        return None
    sizes = body[opened + 1 : closed].split(b",")
    if len(sizes) > 2 or (len(sizes) == 2 and sizes[1].strip() != b"1"):
        return None
    key_at = body.find(b'"data"') + len(b'"data"')
    data_at = body.find(b"[", key_at)
    if data_at < 0 or body[key_at:data_at].strip(b" :") != b"":
        return None
    return _plain_numbers(body[data_at + 1 : -len(V2_SUFFIX)])


def _plain_numbers(listed: bytes) -> list[Value] | None:
    """Read `1.5, 2, NaN` (a model server's usual answer) without a JSON parser; None if unsure.

    `float` itself refuses what is not a number (strings, lists, objects, true, null); only the
    digit separator `_`, which it takes and JSON does not, is looked for first. Each `in` test
    of bytes costs about as much as the whole parse, so there is just that one.
    """
    if not listed or b"_" in listed:
        return None
    try:
        return [float(item) for item in listed.split(b",")]
    except ValueError:  # true, null, "text", [1], {...}: the JSON parser decides
        return None
