"""The router: weighted, sticky, health-aware reverse proxy in front of two model servers."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from common.predictionlog import is_local, log_filesystem
from common.settings import SystemSettings, system_settings
from router.config import RoutingConfig, Variant, read_routing_file
from router.health import HealthBoard
from router.logupload import SpoolUploader
from router.metrics import VARIANTS, RouterMetrics
from router.policy import Answered, Failure, ProxyPolicy, RetryBudget, failure_answer
from router.predictionlog import PredictionLog
from router.predictions import single_numbers
from router.proxy import Answer, exchange, forward_headers
from router.settings import RouterSettings
from router.shadow import Shadower
from router.watcher import RoutingFileWatcher, RoutingTable

log = logging.getLogger("router")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
JSON = "application/json"


@dataclass
class Runtime:
    """What the router opens at start and closes at shutdown."""

    session: aiohttp.ClientSession | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


SETTINGS = web.AppKey("settings", RouterSettings)
SYSTEM = web.AppKey("system", SystemSettings)
TABLE = web.AppKey("table", RoutingTable)
METRICS = web.AppKey("metrics", RouterMetrics)
HEALTH = web.AppKey("health", HealthBoard)
RNG = web.AppKey("rng", random.Random)
POLICY = web.AppKey("policy", ProxyPolicy)
RUNTIME = web.AppKey("runtime", Runtime)
SHADOW = web.AppKey("shadow", Shadower)
UPLOADER: web.AppKey[SpoolUploader | None] = web.AppKey("uploader")


def create_app(
    settings: RouterSettings,
    *,
    registry: CollectorRegistry | None = None,
    rng: random.Random | None = None,
    system: SystemSettings | None = None,
) -> web.Application:
    """Build the router; raises RoutingFileError if the routing file is invalid.

    `system`: the environment's settings (this process's, read once, by default).
    """
    config, version = read_routing_file(settings.config_path)
    registry = registry or CollectorRegistry()
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[errors_middleware])
    app[SETTINGS] = settings
    app[SYSTEM] = system or system_settings()
    app[TABLE] = RoutingTable(config, version)
    app[METRICS] = RouterMetrics.create(registry, settings.processes)
    app[HEALTH] = HealthBoard(settings)
    app[RNG] = rng or random.Random()  # noqa: S311 (traffic split, not cryptography)
    budget = RetryBudget(
        settings.retry_budget_percent,
        settings.retry_budget_min_per_s,
        settings.retry_budget_window_s,
    )
    table = app[TABLE]
    instance = app[METRICS].instance_id
    app[UPLOADER] = _uploader(settings, app[SYSTEM], instance)
    prediction_log = PredictionLog(
        _log_folder(settings, app[UPLOADER]), instance, lambda: table.current.log.percent,
        app[METRICS].log_records,
    )  # fmt: skip
    app[POLICY] = ProxyPolicy(settings, app[METRICS], app[HEALTH], app[RNG], budget, prediction_log)
    app[RUNTIME] = Runtime()
    app[SHADOW] = Shadower(app[METRICS], settings.shadow_max_in_flight)
    show_config(app)
    app[METRICS].reload_ok.set(1)
    app[METRICS].reload_timestamp.set(time.time())
    app.cleanup_ctx.append(background)
    from router import feedback, openapi, original, original_admin, streaming  # built on this

    app.router.add_post("/invocations", streaming.invocations_entry)
    app.router.add_post("/predict", original.predict)
    app.router.add_get("/", original.index)
    original_admin.add_routes(app)
    feedback.add_routes(app)
    openapi.add_routes(app)
    app.router.add_get("/ping", ping)
    app.router.add_get("/health", health)
    app.router.add_get("/predictions-profile", predictions_profile)
    app.router.add_get("/metrics", make_aiohttp_handler(registry))
    return app


def show_config(app: web.Application) -> None:
    """Reflect the loaded table in the weight gauges and pre-create its version labels."""
    config, metrics = app[TABLE].current, app[METRICS]
    metrics.weight.labels("canary").set(config.canary_weight)
    metrics.weight.labels("stable").set(100 - config.canary_weight)
    metrics.predictions.configure(config.predictions, config.stable.version)
    for variant in VARIANTS:
        version = config.upstream(variant).version
        metrics.requests.labels(variant, version, "200")
        metrics.duration.labels(variant, version)


async def background(app: web.Application) -> AsyncIterator[None]:
    """Own the upstream session, the routing-file watcher and the health checker."""
    settings, runtime, metrics = app[SETTINGS], app[RUNTIME], app[METRICS]
    runtime.session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=0,
            limit_per_host=settings.upstream_connections,
            keepalive_timeout=settings.upstream_keepalive_s,
            ttl_dns_cache=None,
        ),
        timeout=aiohttp.ClientTimeout(
            total=settings.total_timeout_s, sock_connect=settings.connect_timeout_s
        ),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Content-Type"),
    )

    def reloaded(ok: bool, _reason: str) -> None:
        metrics.reloads.labels("success" if ok else "failure").inc()
        metrics.reload_ok.set(1 if ok else 0)
        if ok:
            metrics.reload_timestamp.set(time.time())
            show_config(app)

    def show_health(available: dict[Variant, bool]) -> None:
        for variant in VARIANTS:
            metrics.healthy.labels(variant).set(1 if available.get(variant, False) else 0)

    watcher = RoutingFileWatcher(
        settings.config_path, app[TABLE], reloaded, settings.reload_interval_s
    )
    health = app[HEALTH]
    prediction_log = app[POLICY].log
    assert prediction_log is not None  # noqa: S101 (made by create_app)
    runtime.tasks = [
        asyncio.create_task(watcher.run()),
        asyncio.create_task(health.run(runtime.session, lambda: app[TABLE].current, show_health)),
        asyncio.create_task(prediction_log.run()),
    ]
    uploader = app[UPLOADER]
    if uploader is not None:
        every = app[SETTINGS].prediction_log_upload_s
        runtime.tasks.append(asyncio.create_task(_upload_every(uploader, every)))
    yield
    for task in runtime.tasks:
        task.cancel()
    await asyncio.gather(*runtime.tasks, return_exceptions=True)
    await prediction_log.flush()  # after the front drained: every answer sent is recorded
    if uploader is not None:
        await asyncio.to_thread(uploader.close)  # and uploaded, if the store answers
    await app[SHADOW].close()
    await runtime.session.close()


def _uploader(
    settings: RouterSettings, system: SystemSettings, instance: str
) -> SpoolUploader | None:
    """Return the uploader of a log on object storage (None for a local log, or none)."""
    location = settings.prediction_log
    if location is None or is_local(location):
        return None
    spool = settings.prediction_log_spool or system.state_dir / "predictions-spool"
    return SpoolUploader(spool, instance, str(location))


def _log_folder(settings: RouterSettings, uploader: SpoolUploader | None) -> Path | None:
    """Return the local folder the log writer appends to: the log's, or the upload spool."""
    if uploader is not None:
        return uploader.folder
    if settings.prediction_log is None:
        return None
    return Path(log_filesystem(settings.prediction_log)[1])


async def _upload_every(uploader: SpoolUploader, seconds: float) -> None:
    """Upload the spooled log at once (what routers that died left), then every `seconds`."""
    while True:
        await asyncio.to_thread(uploader.upload)
        await asyncio.sleep(seconds)


def error_response(status: int, error_code: str, message: str) -> web.Response:
    """Return a router-made error in MLflow's body shape."""
    body = json.dumps({"error_code": error_code, "message": message})
    return web.Response(status=status, body=body.encode(), headers={"Content-Type": JSON})


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer the router's own failures in MLflow's shape, never with a traceback."""
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge as error:
        return error_response(413, "REQUEST_LIMIT_EXCEEDED", error.text or "body too large")
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unexpected error answering %s %s", request.method, request.path)
        return error_response(500, "INTERNAL_ERROR", "internal router error; see its log")


async def invocations(request: web.Request) -> web.Response:
    """Proxy MLflow's scoring request to the chosen variant, failing over from the canary."""
    app = request.app
    config = app[TABLE].current  # this request finishes on this table, whatever reloads
    body = await request.read()
    started = time.perf_counter()
    headers = forward_headers(request)
    routed = await route(app, config, body, headers)
    response = answer_client(config, routed.variant, routed.outcome)
    version = config.upstream(routed.variant).version
    answered = routed.outcome.body if isinstance(routed.outcome, Answer) else None
    request_id = request.headers.get("X-Request-Id", "").encode("latin-1")
    stable = app[POLICY].answered(
        routed.variant, version, response.status, started, answered, (request_id, body)
    )
    if routed.variant == "stable" and response.status == 200:
        maybe_shadow(app, config, body, headers, stable, request_id)
    return response


def maybe_shadow(
    app: web.Application,
    config: RoutingConfig,
    body: bytes,
    headers: CIMultiDict[str],
    stable: Answered,
    request_id: bytes,
) -> None:
    """Copy this stable-routed request to the canary for `shadow.percent` of requests."""
    canary = config.canary
    if canary is None or config.shadow.percent <= 0:
        return
    if app[RNG].random() * 100 >= config.shadow.percent:
        return
    session = app[RUNTIME].session
    assert session is not None  # noqa: S101 (opened before the first request)
    prediction_log = app[POLICY].log
    record = None
    if stable.logged and prediction_log is not None:
        version = canary.version

        def record(answer: bytes) -> bool:
            return prediction_log.record(request_id, "shadow", version, body, answer, draw=False)

    app[SHADOW].copy(
        lambda: exchange(session, canary.url, "/invocations", body, headers),
        single_numbers(stable.outputs),
        record,
    )


@dataclass(frozen=True)
class Routed:
    """Which variant finally answered, and how."""

    variant: Variant
    outcome: Answer | Failure


async def route(
    app: web.Application,
    config: RoutingConfig,
    body: bytes,
    headers: CIMultiDict[str],
    path: str = "/invocations",
) -> Routed:
    """Choose a variant, send, and retry on stable as the proxy policy says."""
    policy = app[POLICY]
    variant = policy.choose(config, headers)
    outcome = await send(app, config, variant, path, body, headers)
    retry = policy.settle(config, variant, status_of(outcome), first_try=True)
    if retry is not None:
        variant = retry
        outcome = await send(app, config, variant, path, body, headers)
        policy.settle(config, variant, status_of(outcome), first_try=False)
    return Routed(variant, outcome)


def status_of(outcome: Answer | Failure) -> int | Failure:
    """Return what the policy settles: the upstream's status, or why it did not answer."""
    return outcome if isinstance(outcome, Failure) else outcome.status


async def send(
    app: web.Application,
    config: RoutingConfig,
    variant: Variant,
    path: str,
    body: bytes,
    headers: CIMultiDict[str],
) -> Answer | Failure:
    """Exchange once with a variant's upstream.

    Timeouts are the session's: connect within `connect_timeout_s`, all within `total_timeout_s`.
    """
    session = app[RUNTIME].session
    assert session is not None  # noqa: S101 (opened before the first request)
    return await exchange(session, config.upstream(variant).url, path, body, headers)


def answer_client(
    config: RoutingConfig, variant: Variant, outcome: Answer | Failure
) -> web.Response:
    """Turn the exchange into the client's answer, tagged with the variant and version."""
    if isinstance(outcome, Failure):
        status, error = failure_answer(variant, outcome)
        response = web.Response(status=status, body=error, headers={"Content-Type": JSON})
    else:
        response = web.Response(status=outcome.status, body=outcome.body, headers=outcome.headers)
    tag(response, config, variant)
    return response


def tag(response: web.StreamResponse, config: RoutingConfig, variant: Variant) -> None:
    """Set the router's `X-Model-Variant` and `X-Model-Version` (once each)."""
    response.headers["X-Model-Variant"] = variant
    response.headers["X-Model-Version"] = config.upstream(variant).version


async def ping(_request: web.Request) -> web.Response:
    """Liveness of the router itself."""
    return web.Response(body=b"\n", headers={"Content-Type": JSON})


async def predictions_profile(request: web.Request) -> web.Response:
    """Stable's recent predictions summarized per output, for the controller to cut buckets.

    Deciles and label counts only (what /metrics would show once counted), never an answer.
    """
    metrics = request.app[METRICS]
    config = request.app[TABLE].current
    return web.json_response({
        "instance_id": metrics.instance_id,
        "stable_version": config.stable.version,
        "outputs": metrics.predictions.profile(),
    })  # fmt: skip


async def health(request: web.Request) -> web.Response:
    """200 while stable can serve; the routing file's version and each upstream's state."""
    app = request.app
    table = app[TABLE]
    config = table.current
    available = app[HEALTH].available(config)
    upstreams = {}
    for variant in available:
        upstream = config.upstream(variant)
        upstreams[variant] = {
            "url": upstream.url,
            "version": upstream.version,
            "healthy": available[variant],
            "last_error": app[HEALTH].of(upstream.url).last_error,
        }
    ok = available["stable"]
    from router.original import model_info  # built on this module: imported late

    current = model_info(app, config, "stable")
    body = {
        "status": "healthy" if ok else "unhealthy",
        "current_model_loaded": ok,
        "next_model_loaded": available.get("canary", ok),
        "current_model_info": current,
        "next_model_info": model_info(app, config, "canary") if config.canary else current,
        "canary_probability": config.canary_weight / 100,
        "mlflow_uri": app[SYSTEM].tracking_uri,
        "timestamp": datetime.now(UTC).isoformat(),
        "config_version": table.version,
        "instance_id": app[METRICS].instance_id,
        "processes": app[SETTINGS].processes,
        "config_error": table.last_error,
        "canary_weight": config.canary_weight,
        "upstreams": upstreams,
    }
    return web.Response(
        status=200 if ok else 503, body=json.dumps(body).encode(), headers={"Content-Type": JSON}
    )
