"""The Open Inference Protocol's REST endpoints, beside `/invocations`, from the same engine.

`GET /v2`, `/v2/health/live`, `/v2/health/ready`, `GET /v2/models/{name}` (metadata),
`/v2/models/{name}/ready` and `POST /v2/models/{name}/infer`, each also under
`/versions/{version}`. The model answers to one name: `--model-name`, else its registry name,
else `model`; the version is the one it resolved to. An infer request is read and checked
(`v2/requests.py`), predicted by the fast path when it can be and by MLflow's path otherwise,
exactly as `/invocations` is, and written as MLServer writes the same answer (`v2/answers.py`).
Every error is the protocol's `{"error": "..."}` with its status.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from importlib.metadata import version as package_version
from typing import Any

from aiohttp import web

from contracts.v2 import v2_error
from model_server.http.state import EXECUTORS, SETTINGS, STATE, json_response, predict_fast
from model_server.model.scoring import JSON
from model_server.model.served import ServedModel
from model_server.v2.answers import v2_answer
from model_server.v2.metadata import (
    content_type_of,
    model_metadata,
    one_unnamed_column,
    output_specs,
    signature_columns,
)
from model_server.v2.requests import (
    V2RequestError,
    columns_of,
    fast_rows,
    mlflow_body,
    read_request,
)

log = logging.getLogger("model_server")
DEFAULT_NAME = "model"
"""The name an unregistered model answers to when `--model-name` is not given."""


def add_v2_routes(app: web.Application) -> None:
    """Add the protocol's endpoints to the model server's app."""
    app.router.add_get("/v2", server_metadata)
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.router.add_get(prefix, metadata)
        app.router.add_get(f"{prefix}/ready", model_ready)
        app.router.add_post(f"{prefix}/infer", infer)
    app.router.add_route("*", "/v2/{tail:.*}", unknown)  # after every V2 path above


def served_name(app: web.Application) -> str:
    """Return the model's name under the protocol."""
    return app[SETTINGS].model_name or app[STATE].resolved.name or DEFAULT_NAME


def v2_response(document: Any, status: int = 200) -> web.Response:
    """Answer a JSON document."""
    return json_response(json.dumps(document), status)


def v2_error_response(error: V2RequestError) -> web.Response:
    """Answer an error in the protocol's shape."""
    return json_response(v2_error(error.message), error.status)


async def unknown(request: web.Request) -> web.Response:
    """Answer a V2 path or method this server does not have in the protocol's shape."""
    message = f"{request.method} {request.path} is not an endpoint of this server"
    return v2_error_response(V2RequestError(message, 404))


async def server_metadata(_request: web.Request) -> web.Response:
    """Name the server and its version; no protocol extensions are offered."""
    return v2_response({"name": "mlcanary", "version": package_version("mlcanary"),
                        "extensions": []})  # fmt: skip


async def live(_request: web.Request) -> web.Response:
    """Say the process answers."""
    return v2_response({"live": True})


async def ready(request: web.Request) -> web.Response:
    """Ready once the model is loaded and warm (503 before, or after it failed)."""
    is_ready = request.app[STATE].status == "ready"
    return v2_response({"ready": is_ready}, 200 if is_ready else 503)


def _asked_model(request: web.Request) -> None:
    """Refuse a name or version this server does not serve, as MLServer does (404)."""
    name, version = request.match_info["name"], request.match_info.get("version")
    if name != served_name(request.app):
        raise V2RequestError(f"Model {name} not found", 404)
    if version is not None and version != request.app[STATE].resolved.version:
        raise V2RequestError(f"Model {name} with version {version} not found", 404)


def _ready_model(request: web.Request) -> ServedModel:
    _asked_model(request)
    state = request.app[STATE]
    if state.status != "ready" or state.model is None:
        raise V2RequestError(state.error or "the model is still loading", 503)
    return state.model


async def model_ready(request: web.Request) -> web.Response:
    """Whether the named model is ready."""
    try:
        _asked_model(request)
    except V2RequestError as error:
        return v2_error_response(error)
    is_ready = request.app[STATE].status == "ready"
    body = {"name": request.match_info["name"], "ready": is_ready}
    return v2_response(body, 200 if is_ready else 503)


async def metadata(request: web.Request) -> web.Response:
    """Describe inputs and outputs (names, datatypes, shapes) from the model's signature."""
    try:
        model = _ready_model(request)
    except V2RequestError as error:
        return v2_error_response(error)
    described = model.description
    body = model_metadata(
        served_name(request.app),
        model.resolved.version,
        described.flavor,
        described.signature,
    )
    return v2_response(body)


async def infer(request: web.Request) -> web.Response:
    """Answer an inference request from the same engine as `/invocations`."""
    try:
        model = _ready_model(request)
        answer = await _predicted(request, model, await request.read())
    except V2RequestError as error:
        return v2_error_response(error)
    return v2_response(answer)


async def _predicted(request: web.Request, model: ServedModel, body: bytes) -> dict[str, Any]:
    signature = model.description.signature
    asked = read_request(body, content_type_of(signature))
    columns = None
    if asked.content_type == "pd":
        columns = columns_of(asked, signature_columns(signature))
    predictions: Any = None
    fast = model.fast_path
    if fast is not None and columns is not None and not asked.params:
        rows = fast_rows(columns, fast.columns)
        if rows is not None:
            try:
                predictions = (await predict_fast(request.app, fast, rows)).tolist()
            # Any failure here is answered by MLflow's path below, with MLflow's own error.
            except Exception:
                log.debug("fast path failed; answering through MLflow's path", exc_info=True)
    if predictions is None:
        body = mlflow_body(asked, columns, one_unnamed_column=one_unnamed_column(signature))
        predictions = await _mlflow_predictions(request.app, model, body)
    return v2_answer(
        predictions,
        output_specs(signature),
        model_name=served_name(request.app),
        model_version=model.resolved.version,
        request_id=asked.request_id or request.headers.get("X-Request-Id") or str(uuid.uuid4()),
    )


async def _mlflow_predictions(app: web.Application, model: ServedModel, body: bytes) -> Any:
    """Predict through MLflow's path; its refusal becomes the protocol's error, same status."""
    loop = asyncio.get_running_loop()
    scored = await loop.run_in_executor(app[EXECUTORS].mlflow, model.mlflow.score, body, JSON)
    try:
        answer = json.loads(scored.body)
    except ValueError:
        answer = None
    if scored.status != 200 or not isinstance(answer, dict) or "predictions" not in answer:
        message = answer.get("message") if isinstance(answer, dict) else None
        raise V2RequestError(str(message or scored.body[:500].decode(errors="replace")),
                             scored.status if scored.status != 200 else 500)  # fmt: skip
    return answer["predictions"]
