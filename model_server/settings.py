"""Settings of one model server process, validated once at start."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ServerSettings(BaseModel):
    """How to serve one model version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_uri: str = Field(min_length=1)
    """Anything MLflow loads: `models:/Name/3`, `models:/Name@champion`, `runs:/…`, a path."""
    model_name: str | None = Field(default=None, min_length=1, pattern=r"^[^/\s]+$")
    """The model's name on the Open Inference Protocol's paths (`/v2/models/{name}`); default:
    its registry name, or `model` for an unregistered one."""
    host: str = "127.0.0.1"
    """Address to listen on."""
    port: int = Field(default=5001, ge=0, le=65535)
    """Port to listen on (0 picks a free one)."""
    engine: Literal["native", "mlflow"] = "native"
    """`native`: this aiohttp server; `mlflow`: the real `mlflow models serve`."""
    batching: bool = True
    """Predict requests that arrive together in one call."""
    batch_window_ms: float = Field(default=0.0, ge=0.0, le=1000.0)
    """Extra wait to gather a batch; 0 batches only what queued while the model was busy."""
    max_batch_rows: int = Field(default=512, ge=1)
    """Most rows one predict call takes."""
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """Largest request body; larger ones get 413."""
    shutdown_timeout_s: float = Field(default=30.0, ge=0.0)
    """How long SIGTERM waits for requests in flight."""
    mlflow_idle_s: float = Field(default=60.0, ge=0.0)
    """With a compiled fast path, how long MLflow's worker process (CSV, params, rows the fast
    path refuses) stays without a request before it is stopped to free its memory."""
