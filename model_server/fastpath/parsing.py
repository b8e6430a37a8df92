"""The fast parser: plain JSON rows in any of MLflow's formats, straight to an array.

Each column holds numbers, whole numbers or text, as the signature says. Anything the parser
does not recognise exactly (extra or missing columns, a value of another type, booleans, NaN,
null, `params`, an `index`, CSV) returns None, and the request goes through MLflow's own
parser, which keeps the wire contract, errors included, exactly MLflow's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

ColumnKind = Literal["number", "integer", "text"]

FORMAT_KEYS = frozenset({"dataframe_split", "dataframe_records", "instances", "inputs"})
LARGEST_EXACT_INT = 2**53


def is_plain_json(content_type: str) -> bool:
    """Whether the content type is `application/json`, at most with `charset=utf-8`."""
    mime, _, parameters = content_type.partition(";")
    if mime.strip().lower() != "application/json":
        return False
    parameters = parameters.strip().lower().replace(" ", "")
    return parameters in ("", "charset=utf-8")


@dataclass(frozen=True)
class Columns:
    """The input columns a fast path reads, in the signature's order, and what each holds."""

    names: tuple[str, ...]
    kinds: tuple[ColumnKind, ...]

    @property
    def numeric(self) -> bool:
        """Whether every column holds numbers: rows are then a float64 array."""
        return "text" not in self.kinds

    @property
    def text(self) -> frozenset[str]:
        """The columns holding strings."""
        return frozenset(n for n, k in zip(self.names, self.kinds, strict=True) if k == "text")


def plain_rows(body: bytes, columns: Columns) -> np.ndarray | None:
    """Return the body's rows in column order, or None if it is not plain.

    Rows are float64 when every column is numeric, else an object array holding Python
    numbers and strings.
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict) or len(document) != 1:
        return None
    ((key, data),) = document.items()
    if key not in FORMAT_KEYS:
        return None
    names = columns.names
    accepts = [ACCEPTS[kind] for kind in columns.kinds]
    if key == "dataframe_split":
        values = _split_values(data, names, accepts)
    elif key == "inputs" and isinstance(data, dict):
        values = _column_values(data, names, accepts)
    else:
        values = _record_values(data, names, accepts)
    if values is None:
        return None
    dtype = np.float64 if columns.numeric else object
    return np.asarray(values, dtype=dtype).reshape(-1, len(names))


def _number(value: Any) -> bool:
    kind = type(value)
    if kind is float:
        return math.isfinite(value)
    return _integer(value)


def _integer(value: Any) -> bool:
    return type(value) is int and -LARGEST_EXACT_INT <= value <= LARGEST_EXACT_INT


def _text(value: Any) -> bool:
    return type(value) is str


Accepts = Callable[[Any], bool]
ACCEPTS: dict[ColumnKind, Accepts] = {"number": _number, "integer": _integer, "text": _text}


def _row_accepted(row: list[Any], accepts: list[Accepts]) -> bool:
    return all(accept(value) for accept, value in zip(accepts, row, strict=True))


def _record_values(
    records: Any, names: tuple[str, ...], accepts: list[Accepts]
) -> list[Any] | None:
    if not isinstance(records, list) or not records:
        return None
    wanted = set(names)
    values: list[Any] = []
    for record in records:
        if not isinstance(record, dict) or record.keys() != wanted:
            return None
        row = [record[name] for name in names]
        if not _row_accepted(row, accepts):
            return None
        values.extend(row)
    return values


def _split_values(split: Any, names: tuple[str, ...], accepts: list[Accepts]) -> list[Any] | None:
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
        if not _row_accepted(ordered, accepts):
            return None
        values.extend(ordered)
    return values


def _column_values(
    columns: dict[str, Any], names: tuple[str, ...], accepts: list[Accepts]
) -> list[Any] | None:
    if columns.keys() != set(names):
        return None
    lists = [columns[name] for name in names]
    if not all(isinstance(column, list) for column in lists):
        return None
    lengths = {len(column) for column in lists}
    if len(lengths) != 1 or 0 in lengths:
        return None
    if not all(accept(value) for accept, column in zip(accepts, lists, strict=True)
               for value in column):  # fmt: skip
        return None
    return [value for row in zip(*lists, strict=True) for value in row]
