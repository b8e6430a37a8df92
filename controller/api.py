"""The admin API (aiohttp): status, deploy, weight, promote, rollback; a bearer token on each."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from common.bodies import BodyTooLarge, read_bounded
from contracts.errors import error_response
from contracts.labels import MAX_LABELS_BYTES
from contracts.routing import RoutingFileError
from controller import page
from controller.changerequests import (
    Change,
    Confirmation,
    DeployRequest,
    LongChange,
    PlanRequest,
    RolloutRequest,
    WeightRequest,
    body_of,
)
from controller.changes import Controller
from controller.errors import ControllerError, InvalidChange, LabelsRefused, Superseded
from controller.feedback import LabelBook
from controller.hosts import LOOPBACK_NAMES, is_allowed
from controller.jsonanswers import json_answer
from controller.live import LiveTraffic
from controller.rollout.engine import RolloutRunner
from controller.rollout.planner import plan_report
from controller.rollout.simulate import Traffic
from controller.rollout.window import Snapshot, take_snapshot
from controller.token import token_matches

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CONTROLLER = web.AppKey("controller", Controller)
ROLLOUT = web.AppKey("rollout", RolloutRunner)


@dataclass(frozen=True)
class Tokens:
    """The controller's two bearer tokens (see `controller.token`)."""

    admin: str
    labels: str


TOKENS = web.AppKey("tokens", Tokens)
HOST_NAMES = web.AppKey("host_names", frozenset[str])
LABELS = web.AppKey("labels", LabelBook)
LABELS_LOCK = web.AppKey("labels_lock", asyncio.Lock)
LIVE = web.AppKey("live", LiveTraffic)
QUERY_TOKEN_NAMES = ("token", "access_token", "api_key", "apikey")
OPEN_PATHS = frozenset({"/ping", "/metrics", *page.OPEN_PATHS})
LABELS_PATH = "/api/feedback"
"""The one path the labels token opens (the admin token opens it too)."""


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Check `Host` and the bearer token; turn errors into clear answers.

    `Host` must be one of the controller's names (see `controller.hosts`); the token is never
    taken from the query string.
    """
    if not is_allowed(request.headers.get("Host"), request.app[HOST_NAMES]):
        return error_response(
            400, "BAD_REQUEST",
            "this controller does not answer to that Host; name it with --allowed-host"
            " (MLCANARY_ALLOWED_HOSTS)",
        )  # fmt: skip
    if request.path not in OPEN_PATHS:
        if any(name in request.query for name in QUERY_TOKEN_NAMES):
            return error_response(
                401, "UNAUTHENTICATED",
                "tokens are not accepted in the query string; send Authorization: Bearer <token>",
            )  # fmt: skip
        refused = _refused_token(request)
        if refused is not None:
            return refused
    try:
        return await handler(request)
    except InvalidChange as error:
        return error_response(400, "INVALID_PARAMETER_VALUE", str(error))
    except Superseded as error:
        return error_response(409, "ABORTED", str(error))
    except LabelsRefused as error:
        return error_response(error.status, error.code, str(error))
    except BodyTooLarge as error:
        if request.path == LABELS_PATH:
            request.app[LABELS].refused.labels("too_large").inc()
        return error_response(413, "REQUEST_LIMIT_EXCEEDED", str(error))
    except (ControllerError, RoutingFileError) as error:
        return error_response(503, "TEMPORARILY_UNAVAILABLE", str(error))


def _refused_token(request: web.Request) -> web.Response | None:
    """Check the bearer token against the path's scope (before any body is read)."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    given = given.strip()
    if scheme.lower() != "bearer" or not given:
        return error_response(
            401, "UNAUTHENTICATED", "send the admin token as Authorization: Bearer <token>"
        )
    tokens = request.app[TOKENS]
    admin, labels = token_matches(given, tokens.admin), token_matches(given, tokens.labels)
    if admin or (labels and request.path == LABELS_PATH):
        return None
    if labels:
        return error_response(
            403, "PERMISSION_DENIED", f"the labels token may only post labels ({LABELS_PATH})"
        )
    return error_response(403, "PERMISSION_DENIED", "the admin token is not valid")


def _answer(record: dict[str, Any]) -> web.Response:
    """Answer a change: 200 with its audit record, or 202 when it was only recorded."""
    return json_answer(record, status=202 if "accepted" in record else 200)


async def ping(_request: web.Request) -> web.Response:
    """Liveness, without a token."""
    return web.Response(text="ok\n")


async def overview(request: web.Request) -> web.Response:
    """Answer what the operator page shows, in one answer, without the token (controller/page).

    Read-only, and without what only the admin API shows: no internal URL (of model servers or
    routers), no change's arguments.
    """
    app = request.app
    state = app[ROLLOUT].state
    return json_answer({
        **anonymous_status(await app[CONTROLLER].status()), "quality": app[LABELS].report(),
        "logged_answers": app[LABELS].memory(),
        "rollout": state.shown() if state else None, "live": app[LIVE].watch(),

        "now": time.time(),
    })  # fmt: skip


def anonymous_status(described: dict[str, Any]) -> dict[str, Any]:
    """Keep of `Controller.status` what anyone who can reach the page may read."""
    canary = described["canary"]
    return {
        **described,
        "stable": {key: described["stable"][key] for key in ("version", "protocols")},
        "canary": {key: canary[key] for key in ("version", "weight", "protocols")}
        if canary
        else None,
        "routers": {
            f"router {number}": seen for number, seen in enumerate(described["routers"].values(), 1)
        },
        "pending": [
            {"number": change["number"], "action": change["action"], "stage": change["stage"]}
            for change in described["pending"]
        ],
        "recent_changes": [
            {key: change.get(key) for key in ("time", "action", "reason")}
            for change in described["recent_changes"]
        ],
    }


async def status(request: web.Request) -> web.Response:
    """Describe the split, the routers' view, the aliases, the last changes and the quality."""
    described = await request.app[CONTROLLER].status()
    labels = request.app[LABELS]
    return json_answer({**described, "quality": labels.report(), "logged_answers": labels.memory()})


async def feedback(request: web.Request) -> web.Response:
    """Take labels for logged requests: one `{"request_id", "label"}` or a list of them."""
    raw = await read_bounded(request, MAX_LABELS_BYTES)
    try:
        document = json.loads(raw)
    except ValueError as error:
        raise InvalidChange(f"the body is not JSON: {error}") from None
    async with request.app[LABELS_LOCK]:  # one batch at a time: each is kept whole or not at all
        taken = await asyncio.to_thread(request.app[LABELS].take, document)
    return json_answer(taken)


async def versions(request: web.Request) -> web.Response:
    """List the registered model's versions, from the registry."""
    controller = request.app[CONTROLLER]
    return json_answer(
        {
            "model": (await controller.current()).model,
            "versions": await controller.registry.versions(),
        }
    )


async def deploy(request: web.Request) -> web.Response:
    """Start or adopt a server for a version and make it the canary."""
    asked: DeployRequest = await body_of(request, DeployRequest)
    controller = request.app[CONTROLLER]
    record = await controller.deploy(
        asked.version, asked.url, asked.weight, asked.reason, detach=asked.detach
    )
    return _answer(record)


async def weight(request: web.Request) -> web.Response:
    """Set the canary's share."""
    asked: WeightRequest = await body_of(request, WeightRequest)
    controller = request.app[CONTROLLER]
    return _answer(await controller.set_weight(asked.weight, asked.reason, detach=asked.detach))


async def promote(request: web.Request) -> web.Response:
    """Make the canary stable."""
    asked: LongChange = await body_of(request, LongChange)
    return _answer(await request.app[CONTROLLER].promote(asked.reason, detach=asked.detach))


async def rollback(request: web.Request) -> web.Response:
    """Send the canary no traffic."""
    asked: Change = await body_of(request, Change)
    await request.app[ROLLOUT].end_for_rollback(asked.reason)
    return json_answer(await request.app[CONTROLLER].rollback(asked.reason))


async def rollout_start(request: web.Request) -> web.Response:
    """Start an automated rollout of the current canary."""
    asked: RolloutRequest = await body_of(request, RolloutRequest)
    state = await request.app[ROLLOUT].start(asked.plan())
    return json_answer(state.shown())


async def rollout_plan(request: web.Request) -> web.Response:
    """Measure the traffic, then say what the plan would catch at it, step by step."""
    asked: PlanRequest = await body_of(request, PlanRequest)
    plan = asked.plan()
    measured = await request.app[ROLLOUT].measure(plan, asked.measure_s)
    traffic = Traffic(
        steps=plan.steps, interval_s=plan.interval_s, limits=plan.limits,
        max_failed_checks=plan.max_failed_checks,
        max_insufficient_windows=plan.max_insufficient_windows,
    )  # fmt: skip
    deciles = await request.app[ROLLOUT].stable_deciles()
    report = await asyncio.to_thread(plan_report, measured, asked.measure_s, traffic, deciles)
    return json_answer(asdict(report))


async def rollout_status(request: web.Request) -> web.Response:
    """Describe the rollout (running or the last one), or say there is none."""
    state = request.app[ROLLOUT].state
    return json_answer(state.shown() if state else {"status": "idle"})


async def rollout_abort(request: web.Request) -> web.Response:
    """Stop the rollout and roll back at once."""
    asked: Change = await body_of(request, Change)
    return json_answer((await request.app[ROLLOUT].abort(asked.reason)).shown())


async def rollout_pause(request: web.Request) -> web.Response:
    """Hold the rollout's weight."""
    asked: Change = await body_of(request, Change)
    return json_answer((await request.app[ROLLOUT].pause(asked.reason)).shown())


async def rollout_confirm(request: web.Request) -> web.Response:
    """Confirm the promotion a rollout holds for: who (`by`) and why go to the audit log."""
    asked: Confirmation = await body_of(request, Confirmation)
    return json_answer((await request.app[ROLLOUT].confirm(asked.reason, asked.by)).shown())


async def rollout_resume(request: web.Request) -> web.Response:
    """Go on with a paused rollout."""
    asked: Change = await body_of(request, Change)
    return json_answer((await request.app[ROLLOUT].resume(asked.reason)).shown())


def create_api(
    controller: Controller,
    tokens: Tokens,
    rollout: RolloutRunner,
    registry: CollectorRegistry,
    labels: LabelBook,
    host_names: frozenset[str] = LOOPBACK_NAMES,
) -> web.Application:
    """Build the admin API over `controller`, guarded by `tokens`, answering to `host_names`."""
    app = web.Application(middlewares=[guard], client_max_size=16 * 1024 * 1024)
    app[LABELS] = labels
    app[LABELS_LOCK] = asyncio.Lock()
    app[CONTROLLER] = controller
    app[ROLLOUT] = rollout
    app[TOKENS] = tokens
    app[HOST_NAMES] = host_names
    app.router.add_get("/metrics", make_aiohttp_handler(registry))
    app.router.add_post("/api/rollout", rollout_start)
    app.router.add_get("/api/rollout", rollout_status)
    app.router.add_post("/api/rollout/plan", rollout_plan)
    app.router.add_post("/api/rollout/abort", rollout_abort)
    app.router.add_post("/api/rollout/pause", rollout_pause)
    app.router.add_post("/api/rollout/resume", rollout_resume)
    app.router.add_post("/api/rollout/confirm", rollout_confirm)
    app.router.add_get("/ping", ping)
    app.router.add_get("/api/status", status)
    app.router.add_get("/api/versions", versions)
    app.router.add_post("/api/deploy", deploy)
    app.router.add_post("/api/weight", weight)
    app.router.add_post("/api/promote", promote)
    app.router.add_post("/api/rollback", rollback)
    app.router.add_post("/api/feedback", feedback)
    app.router.add_get(page.OVERVIEW_PATH, overview)
    page.add_page(app)
    app[LIVE] = LiveTraffic(lambda: _snapshot(controller), busy=rollout.active)
    app.on_cleanup.append(lambda app: app[LIVE].close())
    return app


async def _snapshot(controller: Controller) -> Snapshot:
    """Read every router's /metrics now (the live traffic the page plots)."""
    return await take_snapshot(controller.session, await controller.settings.routers.urls())
