"""What the model server's handlers share: the app's keys, the model's state, its threads.

Kept apart from the app's assembly (`app.py`) so that both protocols' handlers (`app.py` for
MLflow's, `v2.py` for the Open Inference Protocol) read the same state without importing
each other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from aiohttp import web

from model_server.fastpath.choose import FastPath
from model_server.http.batching import MicroBatcher
from model_server.http.errors import ScoringError
from model_server.http.metrics import ServerMetrics
from model_server.model.loading import ResolvedModel
from model_server.model.scoring import JSON
from model_server.model.served import ServedModel
from model_server.settings import ServerSettings

Loader = Callable[[ResolvedModel], ServedModel]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class ModelState:
    """The one model this server holds, and how far it got: loading, ready or failed."""

    resolved: ResolvedModel
    status: Literal["loading", "ready", "failed"] = "loading"
    model: ServedModel | None = None
    error: str | None = None
    batcher: MicroBatcher | None = None
    settled: asyncio.Event = field(default_factory=asyncio.Event)

    def ready_model(self) -> ServedModel:
        """Return the model, or refuse with 503 while it is loading or after it failed."""
        if self.status != "ready" or self.model is None:
            reason = self.error or "the model is still loading"
            raise ScoringError(reason, status=503, error_code="TEMPORARILY_UNAVAILABLE")
        return self.model


@dataclass(frozen=True)
class Executors:
    """Threads off the event loop: one for batched predicts, a few for MLflow's own path."""

    predict: ThreadPoolExecutor
    mlflow: ThreadPoolExecutor

    def shutdown(self) -> None:
        """Let running work finish; start no more."""
        self.predict.shutdown(wait=False, cancel_futures=True)
        self.mlflow.shutdown(wait=False, cancel_futures=True)


SETTINGS = web.AppKey("settings", ServerSettings)
STATE = web.AppKey("state", ModelState)
METRICS = web.AppKey("metrics", ServerMetrics)
EXECUTORS = web.AppKey("executors", Executors)
LOADER: web.AppKey[Loader] = web.AppKey("loader")


def json_response(body: str | bytes, status: int = 200) -> web.Response:
    """Answer JSON with MLflow's bare `application/json` content type."""
    data = body.encode() if isinstance(body, str) else body
    return web.Response(body=data, status=status, headers={"Content-Type": JSON})


async def predict_fast(app: web.Application, fast: FastPath, rows: np.ndarray) -> np.ndarray:
    """Predict plain rows on the raw model: batched with other requests when batching is on."""
    batcher = app[STATE].batcher
    if batcher is not None:
        return await batcher.predict(rows)
    return await asyncio.get_running_loop().run_in_executor(
        app[EXECUTORS].predict, fast.predict, rows
    )
