"""The original app's public endpoints on the router: `/predict` and `/`, in their shapes.

current = stable, next = canary. `/predict` takes `{"features": {...}}` (one row, or lists
of equal length for several) and is answered from `/invocations` on the chosen variant.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from common.redaction import redact
from contracts.errors import error_response
from contracts.routing import RoutingConfig, Variant
from router.proxy.exchange import Answer, forward_headers
from router.proxy.requestids import new_request_id
from router.web.scoring import Routed, answer_client, route, tag
from router.web.state import HEALTH, METRICS, POLICY, SYSTEM, TABLE
from router.web.status import model_info

EXPECTED = 'expected {"features": {"hours_studied": 6.5, "sleep_hours": 7, ...}}'
MODEL_USED: dict[Variant, str] = {"stable": "current", "canary": "next"}


class PredictShapeError(ValueError):
    """The /predict body is not the original app's shape."""


def split_from_features(document: Any) -> tuple[dict[str, Any], bool]:
    """Turn `{"features": {...}}` into a `dataframe_split`; say whether it held several rows."""
    if not isinstance(document, dict) or set(document) != {"features"}:
        keys = sorted(document) if isinstance(document, dict) else type(document).__name__
        raise PredictShapeError(f"{EXPECTED}; got {keys}")
    features = document["features"]
    if not isinstance(features, dict) or not features:
        raise PredictShapeError(f"{EXPECTED}; 'features' must be a non-empty object")
    columns = list(features)
    values = list(features.values())
    several = all(isinstance(value, list) for value in values)
    if several:
        lengths = {len(value) for value in values}
        if len(lengths) != 1 or 0 in lengths:
            raise PredictShapeError("every feature list in 'features' must have the same length")
        rows = [list(row) for row in zip(*values, strict=True)]
    elif any(isinstance(value, list | dict) for value in values):
        raise PredictShapeError("'features' values must all be numbers, or all be lists")
    else:
        rows = [values]
    return {"dataframe_split": {"columns": columns, "data": rows}}, several


async def predict(request: web.Request) -> web.Response:
    """Answer the original `/predict`: features in, the prediction and its model out."""
    app = request.app
    config = app[TABLE].current
    try:
        split, several = split_from_features(json.loads(await request.read()))
    except (ValueError, RecursionError) as error:
        message = str(error) if isinstance(error, PredictShapeError) else f"{EXPECTED}: {error}"
        return error_response(400, "BAD_REQUEST", message)
    headers = forward_headers(request)
    headers["Content-Type"] = "application/json"
    started = time.perf_counter()
    routed = await route(app, config, json.dumps(split).encode(), headers, request.headers)
    # Set by the router's front for every request; absent only when the app is used alone.
    request_id = request.headers.get("X-Request-Id") or new_request_id().decode()
    response = original_answer(app, config, routed, several, request_id)
    version = config.upstream(routed.variant).version
    upstream_body = routed.outcome.body if isinstance(routed.outcome, Answer) else None
    app[POLICY].answered(
        routed.variant, version, response.status, started, upstream_body,
        (
            request_id.encode("latin-1"), json.dumps(split).encode(),
            request.headers.get("X-Client-Request-Id", "").encode("latin-1"),
        ),
        forced=routed.forced,
    )  # fmt: skip
    return response


def original_answer(
    app: web.Application, config: RoutingConfig, routed: Routed, several: bool, request_id: str
) -> web.Response:
    """Shape the upstream's answer as the original app did, or pass its error on."""
    outcome = routed.outcome
    if not isinstance(outcome, Answer) or outcome.status != 200:
        return answer_client(config, routed.variant, outcome)
    predictions = json.loads(outcome.body)["predictions"]
    body = {
        "prediction": predictions if several else predictions[0],
        "model_used": MODEL_USED[routed.variant],
        "model_info": model_info(app, config, routed.variant),
        "prediction_time": datetime.now(UTC).isoformat(),
        "request_id": request_id,
    }
    response = web.json_response(body)
    tag(response, config, routed.variant)
    return response


async def index(request: web.Request) -> web.Response:
    """Answer the original `GET /`: a status summary, plus the routing file's version."""
    app = request.app
    config = app[TABLE].current
    available = app[HEALTH].available(config)
    return web.json_response(
        {
            "message": "mlcanary router: canary deployments for MLflow models",
            "status": "healthy" if available["stable"] else "unhealthy",
            "current_model": model_info(app, config, "stable"),
            "next_model": model_info(app, config, "canary") if config.canary else None,
            "canary_probability": config.canary_weight / 100,
            "mlflow_uri": redact(app[SYSTEM].tracking_uri or "") or None,
            "config_version": app[TABLE].version,
            "requests_by_variant": {
                variant: _served(app, variant) for variant in ("stable", "canary")
            },
        }
    )


def _served(app: web.Application, variant: str) -> float:
    """Count requests answered by a variant since start, all versions and codes."""
    total = 0.0
    for metric in app[METRICS].requests.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels.get("variant") == variant:
                total += sample.value
    return total
