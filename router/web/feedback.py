"""`POST /feedback` on the router's port: late labels, kept by the controller.

Clients already talk to the router, so labels come back the same way; the router checks only
that a token is sent, and the controller (which holds the token, the prediction log's index and
the labels) checks the rest and answers (see `controller.feedback`).
"""

from __future__ import annotations

import json

from aiohttp import web

from contracts.errors import error_response
from router.web.original_admin import forward_to_controller


async def feedback(request: web.Request) -> web.Response:
    """Answer `POST /feedback`: labels for logged requests, kept by the controller."""
    try:
        document = json.loads(await request.read())
    except ValueError as error:
        return error_response(400, "BAD_REQUEST", f"the body is not JSON: {error}")
    done = await forward_to_controller(request, "/api/feedback", document)
    return done if isinstance(done, web.Response) else web.json_response(done)


def add_routes(app: web.Application) -> None:
    """Add `POST /feedback` to the router."""
    app.router.add_post("/feedback", feedback)
