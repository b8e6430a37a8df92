"""The router's Prometheus metrics (prefix `mlcanary_`), labels declared up front."""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from router.config import Variant
from router.plainmetrics import CounterChild, HistogramChild, PlainCounter, PlainHistogram
from router.predictioncounts import PredictionCounts
from router.predictions import Outputs

VARIANTS: tuple[Variant, ...] = ("stable", "canary")
LATENCY_BUCKETS = (
    0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
    0.25, 0.5, 1, 2.5, 5, 10,
)  # fmt: skip
"""Fine below 20 ms, where a model server answers: the rollout's p99 gate reads these."""
CLASS_METRIC = "mlcanary_prediction_class"
CLASS_SAMPLE = f"{CLASS_METRIC}_total"
"""Predictions counted by class label: labels `variant`, `output`, `class`."""
DELTA_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 25)
UPSTREAM_ERROR_REASONS = ("connect", "reset", "timeout", "status_5xx")
INSTANCE_METRIC = "mlcanary_router_instance"
"""An info metric naming the router process: its counters start from zero with it."""
INSTANCE_SAMPLE = f"{INSTANCE_METRIC}_info"
"""Its sample's name in the exposition, with the labels `instance_id` and `processes` (how many
router processes share the port, each to be read)."""


def new_instance_id() -> str:
    """Name this router process uniquely, also across restarts and `--workers` processes.

    Whoever reads /metrics differences counters per instance: a new id means counters that
    started from zero (a restart), whatever the sum over routers did meanwhile.
    """
    started_ms = time.time_ns() // 1_000_000
    return f"{socket.gethostname()}:{os.getpid()}:{started_ms}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class RouterMetrics:
    """Every metric of DESIGN §3; those recorded per request are lock-free (plainmetrics)."""

    requests: PlainCounter
    duration: PlainHistogram
    upstream_errors: Counter
    failovers: Counter
    weight: Gauge
    healthy: Gauge
    reload_ok: Gauge
    reload_timestamp: Gauge
    reloads: Counter
    shadow_requests: Counter
    shadow_delta: Histogram
    log_records: Counter
    """Prediction-log records by result: written, dropped (queue full, disk error)."""
    predictions: PredictionCounts
    """Predictions by output, in buckets or by class, as the routing file says."""
    instance_id: str
    """This router process's name (see `new_instance_id`), also shown in /health."""
    _children: dict[tuple[str, str, int], tuple[CounterChild, HistogramChild]] = field(
        default_factory=dict, compare=False, repr=False
    )
    """Labelled children of `requests` and `duration`, looked up once (hot path)."""

    def answered(self, variant: str, version: str, status: int, seconds: float) -> None:
        """Count one answer to a client and its latency."""
        key = (variant, version, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(variant, version, str(status)),
                self.duration.labels(variant, version),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def predicted(self, variant: str, outputs: Outputs | None) -> None:
        """Count an answer's predictions (see `PredictionCounts`)."""
        if outputs:
            self.predictions.count(variant, outputs)

    @classmethod
    def create(cls, registry: CollectorRegistry, processes: int = 1) -> RouterMetrics:
        """Register the metrics on `registry` and pre-create the variant labels.

        `processes`: how many router processes share this one's port (`--workers`).
        """

        def counter(name: str, doc: str, labels: list[str]) -> Counter:
            return Counter(f"mlcanary_{name}", doc, labels, registry=registry)

        def gauge(name: str, doc: str, labels: list[str] | None = None) -> Gauge:
            return Gauge(f"mlcanary_{name}", doc, labels or [], registry=registry)

        metrics = cls(
            requests=PlainCounter(
                "mlcanary_requests", "Proxied requests by variant, version and status.",
                ["variant", "version", "code"], registry,
            ),
            duration=PlainHistogram(
                "mlcanary_request_duration_seconds", "Time to answer a proxied request.",
                ["variant", "version"], LATENCY_BUCKETS, registry,
            ),
            upstream_errors=counter(
                "upstream_errors", "Failed upstream exchanges by reason.", ["variant", "reason"]
            ),
            failovers=counter(
                "failovers", "Requests retried on stable after the canary failed.",
                ["from_variant"],
            ),
            weight=gauge("variant_weight", "Percent of traffic per variant.", ["variant"]),
            healthy=gauge("upstream_healthy", "1 while the variant takes traffic.", ["variant"]),
            reload_ok=gauge(
                "config_last_reload_successful", "1 if the last routing-file reload worked."
            ),
            reload_timestamp=gauge(
                "config_last_reload_success_timestamp_seconds", "When a routing file last loaded."
            ),
            reloads=counter("config_reloads", "Routing-file reload attempts.", ["result"]),
            shadow_requests=counter(
                "shadow_requests", "Shadow copies by outcome.", ["result"]
            ),
            log_records=counter(
                "prediction_log_records", "Prediction-log records by result.", ["result"]
            ),
            shadow_delta=Histogram(
                "mlcanary_shadow_prediction_delta",
                "Absolute difference between canary and stable predictions on shadowed rows.",
                buckets=DELTA_BUCKETS, registry=registry,
            ),
            predictions=PredictionCounts(
                PlainHistogram(
                    "mlcanary_prediction_value",
                    "Numeric predictions by variant and output, in buckets cut from the model's.",
                    ["variant", "output"], (), registry,
                ),
                PlainCounter(
                    CLASS_METRIC, "Predicted class labels by variant and output.",
                    ["variant", "output", "class"], registry,
                ),
            ),
            instance_id=new_instance_id(),
        )  # fmt: skip
        for variant in VARIANTS:
            metrics.weight.labels(variant)
            metrics.healthy.labels(variant).set(1)
            metrics.failovers.labels(variant)
            for reason in UPSTREAM_ERROR_REASONS:
                metrics.upstream_errors.labels(variant, reason)
        for result in ("success", "failure"):
            metrics.reloads.labels(result)
        for result in ("match", "mismatch", "error", "dropped"):
            metrics.shadow_requests.labels(result)
        instance = Info(INSTANCE_METRIC, "This router process.", registry=registry)
        instance.info({"instance_id": metrics.instance_id, "processes": str(processes)})
        return metrics
