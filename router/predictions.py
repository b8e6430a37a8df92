"""Reading the numeric predictions out of a model server's scoring answer, cheaply."""

from __future__ import annotations

import json

MAX_PARSED_BODY = 1024 * 1024
"""Larger answers are not read for predictions (the histogram is a sample, not a record)."""
PLAIN_PREFIX, PLAIN_SUFFIX = b'{"predictions": [', b"]}"


def predictions_of(body: bytes) -> list[float] | None:
    """Return the numeric predictions of a scoring answer, or None if it has none."""
    if len(body) > MAX_PARSED_BODY:
        return None
    if body.startswith(PLAIN_PREFIX) and body.endswith(PLAIN_SUFFIX):
        plain = _plain_numbers(body[len(PLAIN_PREFIX) : -len(PLAIN_SUFFIX)])
        if plain is not None:
            return plain
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    values = document.get("predictions") if isinstance(document, dict) else None
    if not isinstance(values, list):
        return None
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    return [float(v) for v in numbers] if len(numbers) == len(values) else None


def _plain_numbers(listed: bytes) -> list[float] | None:
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
