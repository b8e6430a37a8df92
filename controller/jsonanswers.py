"""Every JSON answer of the controller is standard JSON (RFC 8259), whatever the data.

Python's `json` writes `NaN` and `Infinity` for non-finite floats, which browsers' `JSON.parse`
refuses: a label of 1e308 (an RMSE that overflows) would stop the operator page from updating.
A non-finite number is answered as `null` ("no figure"), as a missing one is.
"""

from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web


def finite(value: Any) -> Any:
    """Return `value` with every non-finite float, at any depth, made None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def standard_dumps(value: Any) -> str:
    """Serialize as standard JSON (`allow_nan=False` holds after `finite`)."""
    return json.dumps(finite(value), allow_nan=False)


def json_answer(value: Any, status: int = 200) -> web.Response:
    """Answer `value` as standard JSON."""
    return web.json_response(value, status=status, dumps=standard_dumps)
