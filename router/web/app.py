"""The router's aiohttp app assembled: its state opened, its routes added, its tasks run.

The handlers live in modules of their own (`scoring`, `streaming`, `status`, `original`, ...),
which read the state through `router.web.state`; only this module knows them all.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from common.predictionlog import is_local, log_filesystem
from common.settings import SystemSettings, system_settings
from contracts.errors import error_response
from contracts.metrics import VARIANTS
from contracts.routing import Variant, read_routing_file
from router.predictionlog.upload import SpoolUploader, retry_wait
from router.predictionlog.writer import PredictionLog
from router.proxy.health import HealthBoard
from router.proxy.policy import ProxyPolicy, RetryBudget
from router.proxy.shadow import Shadower
from router.routing.watcher import RoutingFileWatcher, RoutingTable
from router.settings import RouterSettings
from router.telemetry.metrics import RouterMetrics
from router.web import feedback, openapi, original, original_admin, status, streaming, v2
from router.web.state import (
    HEALTH,
    METRICS,
    POLICY,
    RNG,
    RUNTIME,
    SETTINGS,
    SHADOW,
    SYSTEM,
    TABLE,
    UPLOADER,
    Runtime,
)

log = logging.getLogger("router")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
    app[METRICS] = RouterMetrics.create(
        registry, settings.processes, settings.shared_metrics, settings.instance_id
    )
    app[HEALTH] = HealthBoard(settings)
    app[RNG] = rng or random.Random()  # noqa: S311 (traffic split, not cryptography)
    budget = RetryBudget(
        settings.retry_budget_percent,
        settings.retry_budget_min_per_s,
        settings.retry_budget_window_s,
    )
    table = app[TABLE]
    instance = app[METRICS].process_id  # each process its own spool folder
    app[UPLOADER] = _uploader(settings, app[SYSTEM], instance)
    prediction_log = PredictionLog(
        _log_folder(settings, app[UPLOADER]), instance, lambda: table.current.log.percent,
        app[METRICS].log_records,
        retention_days=None if app[UPLOADER] else settings.prediction_log_retention_days,
    )  # fmt: skip
    app[POLICY] = ProxyPolicy(settings, app[METRICS], app[HEALTH], app[RNG], budget, prediction_log)
    app[RUNTIME] = Runtime()
    app[SHADOW] = Shadower(app[METRICS], settings.shadow_max_in_flight)
    show_config(app)
    app[METRICS].reload_ok.set(1)
    app[METRICS].reload_timestamp.set(time.time())
    app.cleanup_ctx.append(background)
    app.router.add_post("/invocations", streaming.invocations_entry)
    app.router.add_post("/predict", original.predict)
    app.router.add_get("/", original.index)
    original_admin.add_routes(app)
    feedback.add_routes(app)
    v2.add_routes(app)
    openapi.add_routes(app)
    app.router.add_get("/ping", status.ping)
    app.router.add_get("/health", status.health)
    app.router.add_get("/predictions-profile", status.predictions_profile)
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
        metrics = app[METRICS]
        runtime.tasks.append(asyncio.create_task(_upload_every(uploader, every, metrics)))
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


async def _upload_every(uploader: SpoolUploader, seconds: float, metrics: RouterMetrics) -> None:
    """Upload the spooled log at once (what dead routers left), then every `seconds`.

    After a failed round the wait doubles (`retry_wait`); the loop outlives any failure.
    """
    while True:
        uploaded = await asyncio.to_thread(uploader.upload)
        metrics.upload_rounds.labels("ok" if uploaded else "failed").inc()
        metrics.upload_backlog.set(uploader.backlog)
        await asyncio.sleep(retry_wait(seconds, uploader.failures))


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
