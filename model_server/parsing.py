"""The fast parser: plain numeric JSON rows in any of MLflow's formats, straight to an array.

Anything it does not recognise exactly (extra or missing columns, strings, booleans, NaN,
`params`, an `index`, CSV) returns None, and the request goes through MLflow's own parser,
which keeps the wire contract, errors included, exactly MLflow's.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

FORMAT_KEYS = frozenset({"dataframe_split", "dataframe_records", "instances", "inputs"})
LARGEST_EXACT_INT = 2**53


def is_plain_json(content_type: str) -> bool:
    """Whether the content type is `application/json`, at most with `charset=utf-8`."""
    mime, _, parameters = content_type.partition(";")
    if mime.strip().lower() != "application/json":
        return False
    parameters = parameters.strip().lower().replace(" ", "")
    return parameters in ("", "charset=utf-8")


def plain_rows(body: bytes, names: tuple[str, ...]) -> np.ndarray | None:
    """Return the body's rows as float64 in `names` order, or None if it is not plain."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict) or len(document) != 1:
        return None
    ((key, data),) = document.items()
    if key not in FORMAT_KEYS:
        return None
    if key == "dataframe_split":
        values = _split_values(data, names)
    elif key == "inputs" and isinstance(data, dict):
        values = _column_values(data, names)
    else:
        values = _record_values(data, names)
    if values is None:
        return None
    return np.asarray(values, dtype=np.float64).reshape(-1, len(names))


def _number(value: Any) -> bool:
    kind = type(value)
    if kind is float:
        return math.isfinite(value)
    return kind is int and -LARGEST_EXACT_INT <= value <= LARGEST_EXACT_INT


def _record_values(records: Any, names: tuple[str, ...]) -> list[Any] | None:
    if not isinstance(records, list) or not records:
        return None
    wanted = set(names)
    values: list[Any] = []
    for record in records:
        if not isinstance(record, dict) or record.keys() != wanted:
            return None
        row = [record[name] for name in names]
        if not all(_number(value) for value in row):
            return None
        values.extend(row)
    return values


def _split_values(split: Any, names: tuple[str, ...]) -> list[Any] | None:
    if not isinstance(split, dict) or split.keys() != {"columns", "data"}:
        return None
    columns, data = split["columns"], split["data"]
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        return None
    if sorted(columns) != sorted(names) or len(set(columns)) != len(columns):
        return None
    if not isinstance(data, list) or not data:
        return None
    order = [columns.index(name) for name in names]
    values: list[Any] = []
    for row in data:
        if not isinstance(row, list) or len(row) != len(columns):
            return None
        ordered = [row[index] for index in order]
        if not all(_number(value) for value in ordered):
            return None
        values.extend(ordered)
    return values


def _column_values(columns: dict[str, Any], names: tuple[str, ...]) -> list[Any] | None:
    if columns.keys() != set(names):
        return None
    lists = [columns[name] for name in names]
    if not all(isinstance(column, list) for column in lists):
        return None
    lengths = {len(column) for column in lists}
    if len(lengths) != 1 or 0 in lengths:
        return None
    if not all(_number(value) for column in lists for value in column):
        return None
    return [value for row in zip(*lists, strict=True) for value in row]
