"""The router's Prometheus metrics (prefix `mlcanary_`), labels declared up front."""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from contracts.metrics import (
    CLIENT_LIMIT_NAMES,
    CLIENT_LIMITS,
    CONFIG_RELOAD_OK,
    CONFIG_RELOAD_TIMESTAMP,
    CONFIG_RELOADS,
    DELTA_BUCKETS,
    FAILOVERS,
    FORCE_REFUSED,
    FORCED_REQUESTS,
    LATENCY_BUCKETS,
    PREDICTION_CLASS,
    PREDICTION_LOG_BACKLOG,
    PREDICTION_LOG_RECORDS,
    PREDICTION_LOG_UPLOADS,
    PREDICTION_VALUE,
    REQUEST_DURATION,
    REQUESTS,
    ROUTER_INSTANCE,
    SHADOW_DELTA,
    SHADOW_REQUESTS,
    SHADOW_RESULTS,
    UPSTREAM_ERROR_REASONS,
    UPSTREAM_ERRORS,
    UPSTREAM_HEALTHY,
    VARIANT_WEIGHT,
    VARIANTS,
    Family,
)
from router.routing.choosing import FORCE_REFUSALS
from router.telemetry.plainmetrics import CounterChild, HistogramChild, PlainCounter, PlainHistogram
from router.telemetry.predictioncounts import PredictionCounts
from router.telemetry.predictions import Outputs


def new_instance_id() -> str:
    """Name this router process uniquely, also across restarts and `--workers` processes.

    Whoever reads /metrics differences counters per instance: a new id means counters that
    started from zero (a restart), whatever the sum over routers did meanwhile.
    """
    started_ms = time.time_ns() // 1_000_000
    return f"{socket.gethostname()}:{os.getpid()}:{started_ms}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class RouterMetrics:
    """Every metric of the router, as `contracts.metrics` names them.

    Those recorded per request are lock-free (plainmetrics).
    """

    requests: PlainCounter
    duration: PlainHistogram
    forced: PlainCounter
    """Answers to requests an operator forced: apart from `requests`, never judged."""
    force_refused: Counter
    client_limits: Counter
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
    upload_rounds: Counter
    """Rounds uploading the spooled log, by result (a log on object storage only)."""
    upload_backlog: Gauge
    predictions: PredictionCounts
    """Predictions by output, in buckets or by class, as the routing file says."""
    instance_id: str
    """This router process's name (see `new_instance_id`), also shown in /health."""
    _children: dict[tuple[str, str, int], tuple[CounterChild, HistogramChild]] = field(
        default_factory=dict, compare=False, repr=False
    )
    """Labelled children of `requests` and `duration`, looked up once (hot path)."""

    def answered(
        self, variant: str, version: str, status: int, seconds: float, forced: bool = False
    ) -> None:
        """Count one answer to a client and its latency (a forced one only in `forced`)."""
        if forced:
            self.forced.labels(variant, version, str(status)).inc()
            return
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

        def counter(family: Family) -> Counter:
            return Counter(family.name, family.help, family.labels, registry=registry)

        def gauge(family: Family) -> Gauge:
            return Gauge(family.name, family.help, family.labels, registry=registry)

        def plain_counter(family: Family) -> PlainCounter:
            return PlainCounter(family.name, family.help, list(family.labels), registry)

        def plain_histogram(family: Family, buckets: tuple[float, ...]) -> PlainHistogram:
            return PlainHistogram(family.name, family.help, list(family.labels), buckets, registry)

        metrics = cls(
            requests=plain_counter(REQUESTS),
            duration=plain_histogram(REQUEST_DURATION, LATENCY_BUCKETS),
            forced=plain_counter(FORCED_REQUESTS),
            force_refused=counter(FORCE_REFUSED),
            client_limits=counter(CLIENT_LIMITS),
            upstream_errors=counter(UPSTREAM_ERRORS),
            failovers=counter(FAILOVERS),
            weight=gauge(VARIANT_WEIGHT),
            healthy=gauge(UPSTREAM_HEALTHY),
            reload_ok=gauge(CONFIG_RELOAD_OK),
            reload_timestamp=gauge(CONFIG_RELOAD_TIMESTAMP),
            reloads=counter(CONFIG_RELOADS),
            shadow_requests=counter(SHADOW_REQUESTS),
            log_records=counter(PREDICTION_LOG_RECORDS),
            upload_rounds=counter(PREDICTION_LOG_UPLOADS),
            upload_backlog=gauge(PREDICTION_LOG_BACKLOG),
            shadow_delta=Histogram(
                SHADOW_DELTA.name, SHADOW_DELTA.help, buckets=DELTA_BUCKETS, registry=registry
            ),
            predictions=PredictionCounts(
                plain_histogram(PREDICTION_VALUE, ()), plain_counter(PREDICTION_CLASS)
            ),
            instance_id=new_instance_id(),
        )
        for variant in VARIANTS:
            metrics.weight.labels(variant)
            metrics.healthy.labels(variant).set(1)
            metrics.failovers.labels(variant)
            for reason in UPSTREAM_ERROR_REASONS:
                metrics.upstream_errors.labels(variant, reason)
        for limit in CLIENT_LIMIT_NAMES:
            metrics.client_limits.labels(limit)
        for reason in FORCE_REFUSALS:
            metrics.force_refused.labels(reason)
        for result in ("success", "failure"):
            metrics.reloads.labels(result)
        for result in ("ok", "failed"):
            metrics.upload_rounds.labels(result)
        for result in SHADOW_RESULTS:
            metrics.shadow_requests.labels(result)
        instance = Info(ROUTER_INSTANCE.name, ROUTER_INSTANCE.help, registry=registry)
        instance.info({"instance_id": metrics.instance_id, "processes": str(processes)})
        return metrics
