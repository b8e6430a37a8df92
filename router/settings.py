"""Settings of one router process (the split itself lives in the routing file)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr

from common.predictionlog import check_location


def _usable(location: str | Path | None) -> str | Path | None:
    """Refuse a prediction log URL whose filesystem cannot be used here (said at start)."""
    return None if location is None else check_location(location)


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
    retry_budget_percent: float = Field(default=0.2, ge=0, le=1)
    """Retries on stable may be at most this share of the requests of the budget's window..."""
    retry_budget_min_per_s: float = Field(default=10.0, ge=0)
    """...plus this many a second (so that little traffic can still be retried)."""
    retry_budget_window_s: float = Field(default=10.0, gt=0)
    """The sliding window the retry budget counts requests and retries over."""
    drain_timeout_s: float = Field(default=30.0, ge=0)
    """On SIGTERM or SIGINT: how long requests already received get to be answered."""
    header_timeout_s: float = Field(default=10.0, gt=0)
    """A request's line and headers must arrive within this (nginx: client_header_timeout)."""
    keepalive_timeout_s: float = Field(default=15.0, gt=0)
    """An idle client connection is closed after this (nginx: keepalive_timeout)."""
    body_timeout_s: float = Field(default=60.0, gt=0)
    """A request's whole body must arrive within this, from the end of its head: a total, not
    a pause between chunks (nginx's client_body_timeout is per read, which a client trickling
    a byte at a time never reaches)."""
    max_buffered_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    """Bytes of incomplete request bodies held across all connections; a body that would pass
    it is refused with 503 (see `router.plane.bodies`)."""
    max_connections: int = Field(default=4096, ge=1)
    """Client connections held at once; further ones are closed as they come."""
    max_head_bytes: int = Field(default=16 * 1024, ge=1024)
    """Largest request line plus headers; larger ones get 431."""
    max_headers: int = Field(default=100, ge=1)
    """Most headers in a request; more get 431."""
    upstream_connections: int = Field(default=256, ge=1)
    """Connections to each upstream at most; requests beyond them wait for one, in order."""
    upstream_keepalive_s: float = Field(default=4.0, gt=0)
    """Idle upstream connections are closed after this: below uvicorn's 5 s, so the router, not
    the model server, closes them (and never writes on one the server is closing)."""
    reload_interval_s: float = Field(default=0.2, gt=0)
    """How often the routing file is checked for changes."""
    shadow_max_in_flight: int = Field(default=32, ge=1)
    """Shadow copies in flight at most; more are dropped and counted."""
    processes: int = Field(default=1, ge=1)
    """Router processes sharing the port (`--workers`): each says so in /health, so that the
    controller knows how many must confirm a routing file."""
    shared_metrics: Path | None = None
    """With `--workers`: the folder the processes keep their metric values in, so that a scrape
    of any one answers for all (set by the first process, removed when it stops)."""
    instance_id: str = ""
    """The name of the router in /metrics, one for all its processes (set by the first)."""
    prediction_log: Annotated[str | Path | None, AfterValidator(_usable)] = None
    """The prediction log: a folder, or an fsspec URL it is uploaded to in parts (none:
    answers are not recorded, whatever the routing file says)."""
    prediction_log_spool: Path | None = None
    """With a URL: the local folder records are written to before they are uploaded."""
    prediction_log_retention_days: float | None = Field(default=30.0, gt=0)
    """A local log's days older than this are removed (None: kept; on object storage, set the
    bucket's lifecycle rule instead)."""
    prediction_log_upload_s: float = Field(default=10.0, gt=0)
    """With a URL: how often what was written is uploaded (and so how late labels can join)."""
    controller_url: str | None = None
    """The controller the original admin paths forward changes to (none: they answer 503)."""
    force_token: SecretStr | None = Field(default=None, exclude=True)
    """The token a request must carry (`X-Force-Token`) for `X-Force-Variant` to be honoured
    (from `MLCANARY_FORCE_TOKEN`; never dumped, so never on a worker's command line)."""
