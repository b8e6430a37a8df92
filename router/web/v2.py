"""The Open Inference Protocol (V2) on the router's port, under the routing file's model name.

`POST /v2/models/MODEL/infer` is scored as `/invocations` is (split, stickiness, shadow,
failover, retry budget, limits, request ids, prediction log, metrics), each variant asked at
its own V2 path (`routing.protocols`); the raw plane answers it on its fast path and sends the
rest here. `GET /v2/models/MODEL` and `/ready` are stable's answers under MODEL; the server's
`/v2/health/live` and `/ready` are the router's own (ready while stable can serve).

What is refused, with the protocol's `{"error"}`: another model name (404, as a V2 server
answers an unknown model); a `/versions/V` path (404: which version answers is the split's
choice, and a client picking one would steer what the rollout judges); a protocol a variant
that may be chosen does not speak (404, see `routing.protocols.unspoken`).
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from aiohttp import web

from contracts.routing import RoutingConfig
from contracts.v2 import model_path, v2_error
from router.routing.protocols import unspoken
from router.web.state import HEALTH, JSON, RUNTIME, TABLE
from router.web.streaming import scoring_entry

METADATA_TIMEOUT_S = 10.0
MAX_METADATA_BYTES = 1024 * 1024
"""A model's metadata larger than this is cut off, and then answered as not JSON (502)."""


def add_routes(app: web.Application) -> None:
    """Add the router's V2 endpoints."""
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_post("/v2/models/{name}/infer", infer)
    app.router.add_post("/v2/models/{name}/versions/{version}/infer", versioned)
    app.router.add_get("/v2/models/{name}", metadata)
    app.router.add_get("/v2/models/{name}/ready", metadata)
    app.router.add_get("/v2/models/{name}/versions/{version}", versioned)
    app.router.add_get("/v2/models/{name}/versions/{version}/ready", versioned)
    app.router.add_route("*", "/v2/{tail:.*}", unknown)  # after every V2 path above


def v2_refusal(status: int, message: str) -> web.Response:
    """Refuse a request with the protocol's error body."""
    return web.Response(status=status, body=v2_error(message), headers={"Content-Type": JSON})


async def unknown(request: web.Request) -> web.Response:
    """Answer a V2 path or method the router does not serve in the protocol's shape."""
    return v2_refusal(404, f"{request.method} {request.path} is not an endpoint of this router")


async def live(_request: web.Request) -> web.Response:
    """Say the router answers."""
    return web.json_response({"live": True})


async def ready(request: web.Request) -> web.Response:
    """Ready while stable can serve (as `/health`)."""
    is_ready = request.app[HEALTH].available(request.app[TABLE].current)["stable"]
    return web.json_response({"ready": is_ready}, status=200 if is_ready else 503)


def _refusal(request: web.Request, config: RoutingConfig) -> web.Response | None:
    name = request.match_info["name"]
    if name != config.model:
        return v2_refusal(404, f"Model {name} not found")
    why = unspoken(config, "v2")
    return v2_refusal(404, why) if why is not None else None


async def infer(request: web.Request) -> web.StreamResponse:
    """Score a V2 inference request on the routing table of now."""
    config = request.app[TABLE].current
    refused = _refusal(request, config)
    if refused is not None:
        return refused
    return await scoring_entry(request, config, "v2")


async def versioned(request: web.Request) -> web.Response:
    """Refuse a version in the path: the split chooses which version answers."""
    name = request.match_info["name"]
    return v2_refusal(
        404,
        f"the router serves model {name} by its split: ask /v2/models/{name}/infer (and "
        "/v2/models/{name} for metadata) without a version",
    )


async def metadata(request: web.Request) -> web.Response:
    """Stable's metadata or readiness, named as the router names the model."""
    config = request.app[TABLE].current
    refused = _refusal(request, config)
    if refused is not None:
        return refused
    stable = config.stable
    rest = "/ready" if request.path.endswith("/ready") else ""
    path = model_path(stable.model_name or config.model, stable.model_version, rest)
    session = request.app[RUNTIME].session
    assert session is not None  # noqa: S101 (opened before the first request)
    try:
        timeout = aiohttp.ClientTimeout(total=METADATA_TIMEOUT_S)
        async with session.get(stable.url + path, timeout=timeout) as reply:
            status, body = reply.status, await reply.content.read(MAX_METADATA_BYTES)
    except (aiohttp.ClientError, TimeoutError) as error:
        return v2_refusal(
            503, f"the stable model server cannot be reached ({type(error).__name__})"
        )
    document: Any
    try:
        document = json.loads(body)
    except ValueError:
        return v2_refusal(502, "the stable model server's answer is not JSON")
    if status == 200 and isinstance(document, dict) and "name" in document:
        document["name"] = config.model
    return web.Response(status=status, body=json.dumps(document),
                        headers={"Content-Type": JSON})  # fmt: skip
