"""JSON one part serves and another reads: `/health`, `/predictions-profile`, `/metadata`.

The writer builds the model and dumps it; the reader validates what it got with the same model,
so a field renamed on one side fails at the reader's validation, not as a silent `None`. Readers
ignore fields they do not know (a newer writer may add some).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from contracts.routing import Variant


class Payload(BaseModel):
    """Frozen; unknown fields ignored when read, so a writer may add fields without breaking."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class UpstreamState(Payload):
    """One model server as a router sees it."""

    url: str
    version: str
    healthy: bool
    last_error: str | None = None


class UploadState(Payload):
    """How the upload of a prediction log on object storage goes (see router.predictionlog)."""

    backlog_bytes: int
    """Spooled bytes not yet uploaded, as of the last round."""
    failures: int
    """Rounds failed in a row (0 while uploads work)."""
    last_error: str | None = None
    """Why the last round failed (credentials in URIs hidden)."""


class RouterHealth(Payload):
    """A router process's `/health`: the original app's fields, then what the controller reads.

    The HTTP status is 200 while stable can serve, else 503 (and `status` says the same).
    """

    status: str
    """`healthy` or `unhealthy`."""
    current_model_loaded: bool
    next_model_loaded: bool
    current_model_info: dict[str, Any]
    next_model_info: dict[str, Any]
    canary_probability: float
    mlflow_uri: str | None
    timestamp: str
    config_version: str
    """The content hash of the routing file this process follows (the controller waits on it)."""
    instance_id: str
    """This process's name; its counters start from zero with it."""
    processes: int
    """How many router processes share the port (`--workers`), each to be confirmed."""
    config_error: str | None = None
    """Why the routing file on disk is not the one followed, if it is not."""
    canary_weight: float
    upstreams: dict[Variant, UpstreamState]
    prediction_log_upload: UploadState | None = None
    """With a prediction log on object storage: its upload's backlog and last error."""


class OutputProfile(Payload):
    """Stable's recent predictions of one output: deciles for numbers, counts for labels."""

    rows: int
    numeric: bool
    deciles: list[float]
    labels: dict[str, int] | None
    """Each label's count, or None when there are too many distinct labels to list."""


class PredictionsProfile(Payload):
    """A router process's `/predictions-profile`: what the controller cuts buckets from."""

    instance_id: str
    stable_version: str
    outputs: dict[str, OutputProfile]


class ModelServerHealth(Payload):
    """A model server's `/health` (200 once its input example was answered, else 503)."""

    status: str
    model_uri: str
    name: str | None
    version: str
    warm_up: str | None = None
    error: str | None = None


class ModelMetadata(Payload):
    """A native model server's `/metadata`: which model it serves, its signature and example."""

    name: str | None = None
    version: str
    run_id: str | None = None
    model_uri: str | None = None
    requested_uri: str | None = None
    flavor: str | None = None
    signature: dict[str, Any] | None = None
    """MLflow's signature as a dict: `inputs` and `outputs`, each a list of columns."""
    input_example: Any = None
    loaded_at: str | None = None
    load_seconds: float | None = None
    fast_path: bool = False
    compiled: bool = False
    path: str = ""
    """Which path answers plain JSON rows, and why."""
    mlflow_path: str = ""
    warm_up: str = ""

    def signature_inputs(self) -> dict[str, str]:
        """Map each named input column of the signature to its type (empty if unsigned)."""
        inputs = (self.signature or {}).get("inputs") or []
        return {
            str(item.get("name")): str(item.get("type"))
            for item in inputs
            if isinstance(item, dict)
        }
