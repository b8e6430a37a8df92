"""The error body every part answers with: MLflow's scoring server's `{error_code, message}`.

Clients of the router, the model server and the controller see one shape whatever answered, so
an MLflow client's error handling works against any of them.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from common.redaction import redact

if TYPE_CHECKING:
    from aiohttp import web

JSON = "application/json"


class ErrorBody(BaseModel):
    """An error answer, as read back by a client of ours (the CLI's admin client)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    error_code: str
    """MLflow's code: BAD_REQUEST, PERMISSION_DENIED, TEMPORARILY_UNAVAILABLE, ..."""
    message: str
    """What went wrong, for a person."""


def error_body(error_code: str, message: str) -> bytes:
    """Serialize an error the way MLflow's scoring server does (credentials in URIs hidden)."""
    return json.dumps({"error_code": error_code, "message": redact(message)}).encode()


def error_response(status: int, error_code: str, message: str) -> web.Response:
    """Answer an error of our own in MLflow's body shape.

    aiohttp is imported here, not at the top: the CLI reads `ErrorBody` without loading it.
    """
    from aiohttp import web

    return web.Response(
        status=status, body=error_body(error_code, message), headers={"Content-Type": JSON}
    )
