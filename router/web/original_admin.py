"""The original app's admin endpoints on the router's port, in their shapes.

Reads (`/canary-status`, `/model-info`) are answered here; changes (`/update-model`,
`/accept-next-model`, `/canary-probability`) are forwarded to the controller with the
caller's bearer token, which the controller checks. current = stable, next = canary.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from aiohttp import web

from common.settings import SettingsError
from contracts.errors import error_response
from router.web.state import HEALTH, RUNTIME, SETTINGS, SYSTEM, TABLE
from router.web.status import model_info

FORWARD_TIMEOUT = aiohttp.ClientTimeout(total=300)
"""A deploy starts and checks a model server before it answers."""
REGISTRY_TIMEOUT = aiohttp.ClientTimeout(total=5)


def _infos(app: web.Application) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return the current and next model infos (next is current when there is no canary)."""
    config = app[TABLE].current
    current = model_info(app, config, "stable")
    return current, model_info(app, config, "canary") if config.canary else current


async def canary_status(request: web.Request) -> web.Response:
    """Answer `GET /canary-status`: both models, the probability, whether they are the same."""
    config = request.app[TABLE].current
    current, following = _infos(request.app)
    return web.json_response(
        {
            "current_model": current,
            "next_model": following,
            "canary_probability": config.canary_weight / 100,
            "models_identical": following["version"] == current["version"],
        }
    )


async def model_info_page(request: web.Request) -> web.Response:
    """Answer `GET /model-info`: both models, their health, and the registry's versions."""
    app = request.app
    config = app[TABLE].current
    available = app[HEALTH].available(config)
    current, following = _infos(app)
    versions, problem = await registry_versions(app, config.model)
    body: dict[str, Any] = {
        "current_model": current,
        "next_model": following,
        "canary_probability": config.canary_weight / 100,
        "current_model_loaded": available["stable"],
        "next_model_loaded": available.get("canary", available["stable"]),
        "available_models": [
            {"name": config.model, "versions": versions, "description": "mlcanary model"}
        ],
    }
    if problem:
        body["registry_error"] = problem
    return web.json_response(body)


async def registry_versions(app: web.Application, model: str) -> tuple[list[str], str | None]:
    """Ask MLflow's REST API (`MLFLOW_TRACKING_URI`, http only) for the model's versions."""
    tracking = app[SYSTEM].tracking_uri or ""
    if not tracking.startswith(("http://", "https://")):
        return [], "MLFLOW_TRACKING_URI is not an MLflow server this router can ask"
    session = app[RUNTIME].session
    assert session is not None  # noqa: S101 (opened at start-up)
    url = f"{tracking.rstrip('/')}/api/2.0/mlflow/model-versions/search"
    try:
        params = {"filter": f"name='{model}'", "max_results": "1000"}
        async with session.get(url, params=params, timeout=REGISTRY_TIMEOUT) as answer:
            found = await answer.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        return [], f"the registry cannot be read: {error or type(error).__name__}"
    listed = found.get("model_versions", []) if isinstance(found, dict) else []
    return sorted((str(v.get("version")) for v in listed), key=lambda v: int(v)), None


def bearer_missing(request: web.Request) -> web.Response | None:
    """Answer 401 to a change without a bearer token, before its body is read.

    The router holds no token: the controller checks it. Asking for one first means nobody
    without makes the router read or parse a body.
    """
    if request.headers.get("Authorization", "").lower().startswith("bearer "):
        return None
    return error_response(
        401, "UNAUTHENTICATED", "send the admin token as Authorization: Bearer <token>"
    )


async def forward_to_controller(request: web.Request, path: str, body: Any) -> web.Response | Any:
    """POST to the controller with the caller's token; its error answers pass through as-is."""
    missing = bearer_missing(request)
    if missing is not None:
        return missing
    controller = request.app[SETTINGS].controller_url
    if controller is None:
        return error_response(
            503, "TEMPORARILY_UNAVAILABLE", "this router knows no controller to make changes"
        )
    session = request.app[RUNTIME].session
    assert session is not None  # noqa: S101 (opened at start-up)
    headers = {"Authorization": request.headers["Authorization"]}
    try:
        async with session.post(
            f"{controller}{path}", json=body, headers=headers, timeout=FORWARD_TIMEOUT
        ) as answer:
            data = await answer.read()
            if answer.status != 200:
                return web.Response(
                    status=answer.status, body=data, content_type="application/json"
                )
            return json.loads(data)
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        message = f"the controller at {controller} cannot be reached: {error}"
        return error_response(503, "TEMPORARILY_UNAVAILABLE", message)


async def _document(request: web.Request) -> dict[str, Any] | web.Response:
    """Return the request's JSON object, or a 401 or 400 saying what is wrong."""
    missing = bearer_missing(request)
    if missing is not None:
        return missing
    try:
        document = json.loads(await request.read() or b"{}")
    except ValueError as error:
        return error_response(400, "BAD_REQUEST", f"the body is not JSON: {error}")
    if not isinstance(document, dict):
        return error_response(400, "BAD_REQUEST", "the body must be a JSON object")
    return document


async def update_model(request: web.Request) -> web.Response:
    """Answer `POST /update-model`: deploy `model_version` as the next (canary) model."""
    document = await _document(request)
    if isinstance(document, web.Response):
        return document
    config = request.app[TABLE].current
    name, version = document.get("model_name"), document.get("model_version", "latest")
    if name != config.model:
        return error_response(
            400, "BAD_REQUEST", f"model_name must be {config.model!r} (what this system serves)"
        )
    if not isinstance(version, str) or not (version.isdigit() or version == "latest"):
        return error_response(
            400, "BAD_REQUEST", "model_version must be a version number or 'latest'"
        )
    previous = _infos(request.app)[1] if config.canary else None
    try:
        weight = config.canary.weight if config.canary else request.app[SYSTEM].canary_percent()
    except SettingsError as error:
        return error_response(500, "INTERNAL_ERROR", str(error))
    change = {"version": version, "weight": weight, "reason": "POST /update-model"}
    done = await forward_to_controller(request, "/api/deploy", change)
    if isinstance(done, web.Response):
        return done
    new = done["after"]["canary"]["version"]
    return web.json_response(
        {
            "success": True,
            "message": f"version {new} is the next model at {weight:g}% of traffic",
            "previous_model": previous,
            "new_model": {**_infos(request.app)[0], "version": new,
                          "uri": f"models:/{config.model}/{new}", "loaded_at": None},
        }
    )  # fmt: skip


async def accept_next_model(request: web.Request) -> web.Response:
    """Answer `POST /accept-next-model`: promote; both models are then the same."""
    previous = _infos(request.app)[0]
    done = await forward_to_controller(
        request, "/api/promote", {"reason": "POST /accept-next-model"}
    )
    if isinstance(done, web.Response):
        return done
    config = request.app[TABLE].current
    version = done["after"]["stable"]["version"]
    current = {**previous, "version": version, "uri": f"models:/{config.model}/{version}",
               "loaded_at": None}  # fmt: skip
    return web.json_response(
        {
            "success": True,
            "message": f"version {version} is now the current model",
            "previous_current_model": previous,
            "new_current_model": current,
            "next_model": current,
        }
    )


async def canary_probability(request: web.Request) -> web.Response:
    """Answer `POST /canary-probability`: set the next model's share, 0.0 to 1.0."""
    document = await _document(request)
    if isinstance(document, web.Response):
        return document
    probability = document.get("probability")
    valid = isinstance(probability, int | float) and not isinstance(probability, bool)
    if not valid or not 0.0 <= float(probability) <= 1.0:  # type: ignore[arg-type]
        return error_response(400, "BAD_REQUEST", "probability must be a number from 0.0 to 1.0")
    previous = request.app[TABLE].current.canary_weight / 100
    percent = round(float(probability) * 100, 1)  # type: ignore[arg-type]
    change = {"weight": percent, "reason": "POST /canary-probability"}
    done = await forward_to_controller(request, "/api/weight", change)
    if isinstance(done, web.Response):
        return done
    return web.json_response(
        {
            "success": True,
            "message": f"the next model gets {percent:g}% of traffic",
            "previous_probability": previous,
            "canary_probability": percent / 100,
        }
    )


def add_routes(app: web.Application) -> None:
    """Add the original admin paths to the router."""
    app.router.add_get("/canary-status", canary_status)
    app.router.add_get("/model-info", model_info_page)
    app.router.add_post("/update-model", update_model)
    app.router.add_post("/accept-next-model", accept_next_model)
    app.router.add_post("/canary-probability", canary_probability)
