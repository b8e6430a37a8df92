"""The native engine: an aiohttp app serving one model version over MLflow's wire contract."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version as package_version

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from contracts.errors import error_body
from contracts.payloads import ModelMetadata, ModelServerHealth
from contracts.v2 import v2_error
from model_server.fastpath.choose import answer_body
from model_server.fastpath.parsing import is_plain_json, plain_rows
from model_server.http.batching import MicroBatcher
from model_server.http.errors import ScoringError
from model_server.http.metrics import ServerMetrics
from model_server.http.state import (
    EXECUTORS,
    LOADER,
    METRICS,
    SETTINGS,
    STATE,
    Executors,
    Handler,
    Loader,
    ModelState,
    json_response,
    predict_fast,
)
from model_server.http.v2 import add_v2_routes
from model_server.model.loading import ModelLoadError, ResolvedModel, load
from model_server.model.served import ServedModel, served_in_process
from model_server.settings import ServerSettings

log = logging.getLogger("model_server")


def load_in_process(resolved: ResolvedModel) -> ServedModel:
    """Load the model in this process, MLflow's path included."""
    return served_in_process(load(resolved))


def create_app(
    settings: ServerSettings,
    resolved: ResolvedModel,
    *,
    registry: CollectorRegistry | None = None,
    loader: Loader = load_in_process,
) -> web.Application:
    """Build the app; the model loads in the background once the app starts."""
    registry = registry or CollectorRegistry()
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[errors_middleware])
    app[SETTINGS] = settings
    app[STATE] = ModelState(resolved)
    app[METRICS] = ServerMetrics.create(registry, resolved.version)
    app[LOADER] = loader
    app.cleanup_ctx.append(model_lifecycle)
    app.on_response_prepare.append(add_version_header)
    app.router.add_get("/ping", ping)
    app.router.add_get("/health", health)
    app.router.add_get("/version", mlflow_version)
    app.router.add_get("/metadata", metadata)
    app.router.add_get("/metrics", make_aiohttp_handler(registry))
    app.router.add_post("/invocations", invocations)
    add_v2_routes(app)
    return app


async def model_lifecycle(app: web.Application) -> AsyncIterator[None]:
    """Own the executors and the background load for the app's lifetime."""
    executors = Executors(
        predict=ThreadPoolExecutor(1, thread_name_prefix="predict"),
        mlflow=ThreadPoolExecutor(2, thread_name_prefix="mlflow-scoring"),
    )
    app[EXECUTORS] = executors
    loading = asyncio.create_task(load_in_background(app))
    yield
    loading.cancel()
    executors.shutdown()


async def load_in_background(app: web.Application) -> None:
    """Load and warm the model off the event loop, then open for scoring (or record why not)."""
    state, settings, metrics = app[STATE], app[SETTINGS], app[METRICS]
    try:
        model = await asyncio.get_running_loop().run_in_executor(
            app[EXECUTORS].mlflow, app[LOADER], state.resolved
        )
    except ModelLoadError as error:
        state.status, state.error = "failed", str(error)
        log.error("%s", error)
    except Exception as error:
        state.status, state.error = "failed", f"cannot load {state.resolved.uri}: {error!r}"
        log.exception("loading %s failed", state.resolved.uri)
    else:
        if settings.batching and model.fast_path is not None:
            version = state.resolved.version

            def observe(rows: int, requests: int) -> None:
                metrics.batch_rows.labels(version).observe(rows)
                metrics.batch_requests.labels(version).observe(requests)

            state.batcher = MicroBatcher(
                model.fast_path.predict,
                app[EXECUTORS].predict,
                max_rows=settings.max_batch_rows,
                window_seconds=settings.batch_window_ms / 1000,
                observe=observe,
            )
        state.model, state.status = model, "ready"
        # Everything loaded so far lives as long as the process: keep it out of the garbage
        # collector's full passes, which would otherwise stall requests for ~100 ms.
        gc.freeze()
        metrics.ready.labels(state.resolved.version).set(1)
        described = model.description
        log.info("serving %s (%s); %s", model.resolved.uri, described.flavor, described.warm_up)
    finally:
        gc.enable()  # `serve` turns it off for start-up
        state.settled.set()


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer our own errors in the protocol's body shape; count and time scoring requests.

    MLflow's shape (`error_code`, `message`) on its paths, `{"error": ...}` on `/v2` ones.
    """
    started = time.perf_counter()
    v2 = request.path.startswith("/v2")
    try:
        response = await handler(request)
    except ScoringError as error:
        body = v2_error(error.message) if v2 else error.body()
        response = json_response(body, error.status)
    except web.HTTPRequestEntityTooLarge as error:
        message = error.text or "the body is too large"
        body = v2_error(message) if v2 else error_body("REQUEST_LIMIT_EXCEEDED", message)
        response = json_response(body, 413)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unexpected error answering %s %s", request.method, request.path)
        message = "internal error; see the log"
        body = v2_error(message) if v2 else error_body("INTERNAL_ERROR", message)
        response = json_response(body, 500)
    if request.path == "/invocations" or (v2 and request.path.endswith("/infer")):
        metrics, version = request.app[METRICS], request.app[STATE].resolved.version
        metrics.requests.labels(version, str(response.status)).inc()
        metrics.duration.labels(version).observe(time.perf_counter() - started)
    return response


async def add_version_header(request: web.Request, response: web.StreamResponse) -> None:
    """Put `X-Model-Version` on every answer."""
    response.headers["X-Model-Version"] = request.app[STATE].resolved.version


async def ping(request: web.Request) -> web.Response:
    """MLflow's liveness probe: 200 once the model is loaded and warm."""
    return json_response("\n", 200 if request.app[STATE].status == "ready" else 503)


async def health(request: web.Request) -> web.Response:
    """Say whether the model answered its input example, and which model it is."""
    state = request.app[STATE]
    model = state.model
    body = ModelServerHealth(
        status=state.status,
        model_uri=state.resolved.uri,
        name=state.resolved.name,
        version=state.resolved.version,
        warm_up=model.description.warm_up if model else None,
        error=state.error,
    )
    return json_response(body.model_dump_json(), 200 if state.status == "ready" else 503)


async def mlflow_version(_request: web.Request) -> web.Response:
    """Answer the MLflow version, as MLflow's server does."""
    return json_response(package_version("mlflow"))


async def metadata(request: web.Request) -> web.Response:
    """Name, resolved version, run, URI, signature, input example, flavor and load time."""
    model = request.app[STATE].ready_model()
    resolved, described = model.resolved, model.description
    body = ModelMetadata(
        name=resolved.name,
        version=resolved.version,
        run_id=resolved.run_id,
        model_uri=resolved.uri,
        requested_uri=resolved.requested_uri,
        flavor=described.flavor,
        signature=described.signature,
        input_example=described.input_example,
        loaded_at=described.loaded_at,
        load_seconds=round(described.load_seconds, 3),
        fast_path=model.fast_path is not None,
        compiled=model.fast_path is not None and model.fast_path.compiled,
        path=described.path,
        mlflow_path=model.mlflow.where(),
        warm_up=described.warm_up,
    )
    return json_response(json.dumps(body.model_dump(), default=str))


async def invocations(request: web.Request) -> web.Response:
    """Score a request: plain numeric JSON on the fast path, anything else the MLflow way."""
    state = request.app[STATE]
    model = state.ready_model()
    content_type = request.headers.get("Content-Type")
    if not content_type:
        raise ScoringError(
            "the Content-Type header is missing; send application/json or text/csv",
            status=415,
        )
    body = await request.read()
    fast = model.fast_path
    if fast is not None and is_plain_json(content_type):
        rows = plain_rows(body, fast.columns)
        if rows is not None:
            try:
                predictions = await predict_fast(request.app, fast, rows)
            # Any failure here is answered by MLflow's path below, with MLflow's own error.
            except Exception:
                log.debug("fast path failed; answering through MLflow's path", exc_info=True)
            else:
                return json_response(answer_body(predictions))
    scored = await asyncio.get_running_loop().run_in_executor(
        request.app[EXECUTORS].mlflow, model.mlflow.score, body, content_type
    )
    return web.Response(
        body=scored.body, status=scored.status, headers={"Content-Type": scored.content_type}
    )
