"""The router's own answers about itself: `/ping`, `/health`, `/predictions-profile`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from common.redaction import redact
from contracts.payloads import PredictionsProfile, RouterHealth, UploadState, UpstreamState
from contracts.routing import RoutingConfig, Variant
from router.predictionlog.upload import SpoolUploader
from router.web.state import HEALTH, JSON, METRICS, SETTINGS, SYSTEM, TABLE, UPLOADER


async def ping(_request: web.Request) -> web.Response:
    """Liveness of the router itself."""
    return web.Response(body=b"\n", headers={"Content-Type": JSON})


async def predictions_profile(request: web.Request) -> web.Response:
    """Stable's recent predictions summarized per output, for the controller to cut buckets.

    Deciles and label counts only (what /metrics would show once counted), never an answer.
    """
    metrics = request.app[METRICS]
    config = request.app[TABLE].current
    profile = PredictionsProfile(
        instance_id=metrics.process_id,
        stable_version=config.stable.version,
        outputs=metrics.predictions.profile(),
    )
    return web.Response(body=profile.model_dump_json(), headers={"Content-Type": JSON})


async def health(request: web.Request) -> web.Response:
    """200 while stable can serve; the routing file's version and each upstream's state."""
    app = request.app
    table = app[TABLE]
    config = table.current
    available = app[HEALTH].available(config)
    upstreams = {}
    for variant in available:
        upstream = config.upstream(variant)
        upstreams[variant] = UpstreamState(
            url=upstream.url,
            version=upstream.version,
            healthy=available[variant],
            last_error=app[HEALTH].of(upstream.url).last_error,
        )
    ok = available["stable"]
    current = model_info(app, config, "stable")
    body = RouterHealth(
        status="healthy" if ok else "unhealthy",
        current_model_loaded=ok,
        next_model_loaded=available.get("canary", ok),
        current_model_info=current,
        next_model_info=model_info(app, config, "canary") if config.canary else current,
        canary_probability=config.canary_weight / 100,
        mlflow_uri=redact(app[SYSTEM].tracking_uri or "") or None,
        timestamp=datetime.now(UTC).isoformat(),
        config_version=table.version,
        instance_id=app[METRICS].process_id,
        processes=app[SETTINGS].processes,
        config_error=table.last_error,
        canary_weight=config.canary_weight,
        upstreams=upstreams,
        prediction_log_upload=_upload_state(app[UPLOADER]),
    )
    return web.Response(
        status=200 if ok else 503, body=body.model_dump_json(), headers={"Content-Type": JSON}
    )


def _upload_state(uploader: SpoolUploader | None) -> UploadState | None:
    """Return the upload's state as of its last round (None for a local log)."""
    if uploader is None:
        return None
    return UploadState(
        backlog_bytes=uploader.backlog, failures=uploader.failures,
        last_error=uploader.last_error or None,
    )  # fmt: skip


def model_info(app: web.Application, config: RoutingConfig, variant: Variant) -> dict[str, Any]:
    """Return the original's model info object for a variant: name, version, loaded_at, uri."""
    upstream = config.upstream(variant)
    metadata = app[HEALTH].metadata.get(upstream.url)
    return {
        "name": config.model,
        "version": upstream.version,
        "loaded_at": metadata.loaded_at if metadata else None,
        "uri": f"models:/{config.model}/{upstream.version}",
    }
