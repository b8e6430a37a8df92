"""Settings of one router process (the split itself lives in the routing file)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class RouterSettings(BaseModel):
    """How a router listens, times out, checks upstreams and retries."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    config_path: Path
    """The routing file to follow."""
    host: str = "127.0.0.1"
    """Address to listen on."""
    port: int = Field(default=8000, ge=0, le=65535)
    """Port to listen on (0 picks a free one)."""
    connect_timeout_s: float = Field(default=1.0, gt=0)
    """Connecting to an upstream; past it the upstream counts as down."""
    total_timeout_s: float = Field(default=30.0, gt=0)
    """Whole upstream exchange; past it the client gets 504."""
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    """Largest request body; larger ones get 413."""
    stream_above_bytes: int = Field(default=1024 * 1024, ge=0)
    """Bodies declared larger than this are relayed as they arrive instead of buffered."""
    health_interval_s: float = Field(default=2.0, gt=0)
    """How often each upstream's /ping is checked."""
    eject_after_failures: int = Field(default=5, ge=1)
    """Consecutive failures that eject an upstream."""
    eject_base_s: float = Field(default=10.0, gt=0)
    """First ejection; each ejection in a row doubles it."""
    eject_max_s: float = Field(default=300.0, gt=0)
    """Longest ejection."""
    retry_budget_ratio: float = Field(default=0.2, ge=0, le=1)
    """Retries on stable may be at most this share of requests in flight..."""
    retry_budget_min: int = Field(default=3, ge=0)
    """...or this many, whichever is larger."""
    reload_interval_s: float = Field(default=0.2, gt=0)
    """How often the routing file is checked for changes."""
    shadow_max_in_flight: int = Field(default=32, ge=1)
    """Shadow copies in flight at most; more are dropped and counted."""
    controller_url: str | None = None
    """The controller the original admin paths forward changes to (none: they answer 503)."""
