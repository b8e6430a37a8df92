"""`POST /feedback` on the router's port: late labels, kept by the controller.

Clients already talk to the router, so labels come back the same way; the router checks only
that a token is sent and the batch's size, and the controller (which holds the tokens, the
prediction log's index and the labels) checks the rest and answers (see `controller.feedback`).
"""

from __future__ import annotations

import json

from aiohttp import web

from common.bodies import BodyTooLarge, read_bounded
from contracts.errors import error_response
from contracts.labels import MAX_LABELS_BYTES
from router.plane.handler import Refusal
from router.web.original_admin import bearer_missing, forward_to_controller

FEEDBACK_PATH = "/feedback"
UNAUTHENTICATED = "send the admin or labels token as Authorization: Bearer <token>"


def feedback_refusal(headers: list[tuple[bytes, bytes]], length: int | None) -> Refusal | None:
    """Refuse a batch of labels by its head: no bearer token (401), or too long (413).

    Checked by the router's front as the head arrives, so that a body nobody may send is never
    read, buffered or parsed (the handler checks again, for the app on its own).
    """
    bearer = any(
        name.lower() == b"authorization" and value[:7].lower() == b"bearer "
        for name, value in headers
    )
    if not bearer:
        return 401, "UNAUTHENTICATED", UNAUTHENTICATED
    if length is not None and length > MAX_LABELS_BYTES:
        message = f"a batch of {length} bytes exceeds the labels' limit of {MAX_LABELS_BYTES}"
        return 413, "REQUEST_LIMIT_EXCEEDED", message
    return None


async def feedback(request: web.Request) -> web.Response:
    """Answer `POST /feedback`: labels for logged requests, kept by the controller.

    A token is asked for, and the batch's size bounded, before a byte of it is read.
    """
    missing = bearer_missing(request)
    if missing is not None:
        return missing
    try:
        document = json.loads(await read_bounded(request, MAX_LABELS_BYTES))
    except BodyTooLarge as error:
        return error_response(413, "REQUEST_LIMIT_EXCEEDED", str(error))
    except ValueError as error:
        return error_response(400, "BAD_REQUEST", f"the body is not JSON: {error}")
    done = await forward_to_controller(request, "/api/feedback", document)
    return done if isinstance(done, web.Response) else web.json_response(done)


def add_routes(app: web.Application) -> None:
    """Add `POST /feedback` to the router."""
    app.router.add_post(FEEDBACK_PATH, feedback)
