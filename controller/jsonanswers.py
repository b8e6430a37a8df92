"""Every JSON answer of the controller is standard JSON (RFC 8259) with no credential in it.

Python's `json` writes `NaN` and `Infinity` for non-finite floats, which browsers' `JSON.parse`
refuses: a label of 1e308 (an RMSE that overflows) would stop the operator page from updating.
A non-finite number is answered as `null` ("no figure"), as a missing one is. Every string is
redacted (`common.redaction`): an audit record's URL or a registry error naming the tracking
URI shows no password, whichever answer carries it.
"""

from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web

from common.redaction import redact


def shown(value: Any) -> Any:
    """Return `value` as it may be shown: non-finite floats None, strings redacted, any depth."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(str(key)): shown(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [shown(item) for item in value]
    return value


def standard_dumps(value: Any) -> str:
    """Serialize as standard JSON (`allow_nan=False` holds after `shown`)."""
    return json.dumps(shown(value), allow_nan=False)


def json_answer(value: Any, status: int = 200) -> web.Response:
    """Answer `value` as standard JSON."""
    return web.json_response(value, status=status, dumps=standard_dumps)
