"""Every Prometheus metric that crosses a process boundary: its name, labels and help text.

The router and the model server register these; the controller, Prometheus' queries, the alert
rules and the dashboard read them. Declaring each family once here keeps writer and readers on
the same names: a rename is one edit, and a reader can never look for a sample nobody writes.
"""

from __future__ import annotations

from dataclasses import dataclass

from contracts.routing import Variant

PREFIX = "mlcanary_"


@dataclass(frozen=True)
class Family:
    """One metric family: the name it is registered under, its labels and its help."""

    name: str
    """The registered name, without a counter's `_total` or a histogram's `_bucket` suffix."""
    labels: tuple[str, ...]
    help: str

    @property
    def total(self) -> str:
        """A counter's sample name in the exposition."""
        return f"{self.name}_total"

    @property
    def bucket(self) -> str:
        """A histogram's cumulative bucket samples (label `le`)."""
        return f"{self.name}_bucket"

    @property
    def sum(self) -> str:
        """A histogram's sum sample."""
        return f"{self.name}_sum"

    @property
    def count(self) -> str:
        """A histogram's count sample."""
        return f"{self.name}_count"


VARIANTS: tuple[Variant, ...] = ("stable", "canary")
"""Label values of `variant`, pre-created so that dashboards show zeros instead of gaps."""
SINGLE_OUTPUT = "predictions"
"""The `output` label of a model that answers one value per row."""

# The router's, per request: what the rollout's gates judge.
REQUESTS = Family(
    "mlcanary_requests", ("variant", "version", "code"),
    "Proxied requests by variant, version and status.",
)  # fmt: skip
REQUEST_DURATION = Family(
    "mlcanary_request_duration_seconds", ("variant", "version"),
    "Time to answer a proxied request.",
)  # fmt: skip
LATENCY_BUCKETS = (
    0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
    0.25, 0.5, 1, 2.5, 5, 10,
)  # fmt: skip
"""Fine below 20 ms, where a model server answers: the rollout's p99 gate reads these."""
PREDICTION_VALUE = Family(
    "mlcanary_prediction_value", ("variant", "output"),
    "Numeric predictions by variant and output, in buckets cut from the model's.",
)  # fmt: skip
PREDICTION_CLASS = Family(
    "mlcanary_prediction_class", ("variant", "output", "class"),
    "Predicted class labels by variant and output.",
)  # fmt: skip
SHADOW_DELTA = Family(
    "mlcanary_shadow_prediction_delta", (),
    "Absolute difference between canary and stable predictions on shadowed rows.",
)  # fmt: skip
DELTA_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 25)

FORCED_REQUESTS = Family(
    "mlcanary_forced_requests", ("variant", "version", "code"),
    "Requests an operator forced to a variant (X-Force-Variant with the force token): never"
    " judged.",
)  # fmt: skip
"""A family apart from `REQUESTS`, so that no query (the gates', an alert, a dashboard's) can
count an operator's probes as live traffic by leaving out a label."""

# The router's, per event.
FORCE_REFUSED = Family(
    "mlcanary_force_refused", ("reason",),
    "X-Force-Variant not honoured (routed by the split instead), by reason.",
)  # fmt: skip
UPSTREAM_ERRORS = Family(
    "mlcanary_upstream_errors", ("variant", "reason"), "Failed upstream exchanges by reason."
)
UPSTREAM_ERROR_REASONS = ("connect", "reset", "timeout", "status_5xx")
FAILOVERS = Family(
    "mlcanary_failovers", ("from_variant",), "Requests retried on stable after the canary failed."
)
VARIANT_WEIGHT = Family("mlcanary_variant_weight", ("variant",), "Percent of traffic per variant.")
UPSTREAM_HEALTHY = Family(
    "mlcanary_upstream_healthy", ("variant",), "1 while the variant takes traffic."
)
CONFIG_RELOAD_OK = Family(
    "mlcanary_config_last_reload_successful", (), "1 if the last routing-file reload worked."
)
CONFIG_RELOAD_TIMESTAMP = Family(
    "mlcanary_config_last_reload_success_timestamp_seconds", (),
    "When a routing file last loaded.",
)  # fmt: skip
CONFIG_RELOADS = Family("mlcanary_config_reloads", ("result",), "Routing-file reload attempts.")
SHADOW_REQUESTS = Family("mlcanary_shadow_requests", ("result",), "Shadow copies by outcome.")
SHADOW_RESULTS = ("match", "mismatch", "error", "dropped")
PREDICTION_LOG_RECORDS = Family(
    "mlcanary_prediction_log_records", ("result",), "Prediction-log records by result."
)
PREDICTION_LOG_UPLOADS = Family(
    "mlcanary_prediction_log_uploads", ("result",),
    "Rounds uploading the spooled prediction log to object storage, by result (ok, failed).",
)  # fmt: skip
PREDICTION_LOG_BACKLOG = Family(
    "mlcanary_prediction_log_upload_backlog_bytes", (),
    "Spooled prediction-log bytes not yet uploaded to object storage.",
)  # fmt: skip
ROUTER_INSTANCE = Family(
    "mlcanary_router_instance", ("instance_id", "processes"), "This router, all its processes."
)
"""An info metric naming the router: its counters start from zero with it. Every process of a
router run with `--workers` answers a scrape for all of them (the sum, one name), and its sample
(`ROUTER_INSTANCE_SAMPLE`) says how many processes that is."""
ROUTER_INSTANCE_SAMPLE = f"{ROUTER_INSTANCE.name}_info"

CLIENT_LIMITS = Family(
    "mlcanary_client_limits", ("limit",),
    "Client connections or requests cut at a bound, by bound.",
)  # fmt: skip
CLIENT_LIMIT_NAMES = ("connections", "header_timeout", "body_timeout", "buffered", "labels_size")
"""Connections over `max_connections`, a head or a body not whole within its timeout, a body
refused because the bodies held across connections reached `max_buffered_bytes`, a batch of
labels declared over `contracts.labels.MAX_LABELS_BYTES`."""

# The model server's.
MODEL_REQUESTS = Family(
    "mlcanary_model_requests", ("version", "code"), "Scoring requests answered, by HTTP status."
)
MODEL_REQUEST_DURATION = Family(
    "mlcanary_model_request_duration_seconds", ("version",),
    "Time from request to answer of /invocations.",
)  # fmt: skip
MODEL_BATCH_ROWS = Family("mlcanary_model_batch_rows", ("version",), "Rows per predict call.")
MODEL_BATCH_REQUESTS = Family(
    "mlcanary_model_batch_requests", ("version",), "Requests per predict call."
)
MODEL_READY = Family(
    "mlcanary_model_ready", ("version",), "1 once the model answered its input example, else 0."
)
