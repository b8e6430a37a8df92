"""Run one model server process: resolve the URI once, then serve with the chosen engine."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import tempfile
from pathlib import Path

from aiohttp import web

from common.supervision import stop_requested
from model_server.http.app import create_app
from model_server.http.state import STATE, Loader
from model_server.model.loading import ModelLoadError, ResolvedModel, resolve
from model_server.settings import ServerSettings
from model_server.worker.handle import MlflowWorker

log = logging.getLogger("model_server")


def limit_registry_retries() -> None:
    """Make an unreachable registry an error within seconds, not minutes of retries."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def serve(settings: ServerSettings) -> int:
    """Serve until SIGTERM or Ctrl-C; return the exit code. Raises ModelLoadError early."""
    # Start-up imports allocate millions of objects; the collector only slows them down.
    # Loading turns it back on (see model_server.http.app.load_in_background).
    gc.disable()
    limit_registry_retries()
    if settings.engine == "mlflow":
        exec_mlflow_engine(settings, resolve(settings.model_uri))
    # MLflow loads the model in a worker process (model_server/worker/handle.py); this
    # process imports MLflow only if the model has no fast path that works on arrays.
    with tempfile.TemporaryDirectory(prefix="mlcanary-model-") as folder:
        worker = MlflowWorker(Path(folder), settings.mlflow_idle_s)
        try:
            resolved = worker.resolve(settings.model_uri)
            return asyncio.run(serve_native(settings, resolved, worker.load))
        finally:
            worker.close()


async def serve_native(settings: ServerSettings, resolved: ResolvedModel, loader: Loader) -> int:
    """Listen at once (`/health` says 503 while loading), load in the background, serve."""
    app = create_app(settings, resolved, loader=loader)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=settings.shutdown_timeout_s)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
    await site.start()
    host, port = runner.addresses[0][:2]
    print(f"listening on http://{host}:{port} for {resolved.uri}", flush=True)
    stop = stop_requested()
    state = app[STATE]
    settled = asyncio.create_task(state.settled.wait())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({settled, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if state.status == "failed":
        print(f"error: {state.error}", file=sys.stderr, flush=True)
        stopping.cancel()
        await runner.cleanup()
        return 1
    await stopping
    await runner.cleanup()  # stops listening, then waits for requests in flight
    return 0


def exec_mlflow_engine(settings: ServerSettings, resolved: ResolvedModel) -> None:
    """Replace this process with `mlflow models serve --env-manager local` on the same URI."""
    if settings.port == 0:
        raise ModelLoadError("the mlflow engine needs a fixed --port (it cannot report port 0)")
    scripts = Path(sys.executable).parent
    argv = [
        sys.executable, "-m", "mlflow", "models", "serve",
        "-m", resolved.uri, "--env-manager", "local",
        "-h", settings.host, "-p", str(settings.port),
    ]  # fmt: skip
    environment = dict(os.environ)
    # `mlflow models serve` execs a bare `uvicorn`: the one beside this Python must come first.
    environment["PATH"] = os.pathsep.join([str(scripts), environment.get("PATH", "")])
    sys.stdout.flush()
    os.execve(sys.executable, argv, environment)  # noqa: S606 (argv built here, no shell)
