"""The router's Prometheus metrics (prefix `mlcanary_`), labels declared up front."""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, Info

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
from router.telemetry.plainmetrics import (
    Aggregation,
    CounterChild,
    HistogramChild,
    PlainCounter,
    PlainGauge,
    PlainHistogram,
    SharedMetrics,
)
from router.telemetry.predictioncounts import PredictionCounts
from router.telemetry.predictions import Outputs
from router.telemetry.sharedvalues import ValueStore


def new_instance_id() -> str:
    """Name this router uniquely, also across restarts (its `--workers` processes share it).

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
    force_refused: PlainCounter
    client_limits: PlainCounter
    upstream_errors: PlainCounter
    failovers: PlainCounter
    weight: PlainGauge
    healthy: PlainGauge
    reload_ok: PlainGauge
    reload_timestamp: PlainGauge
    reloads: PlainCounter
    shadow_requests: PlainCounter
    shadow_delta: PlainHistogram
    log_records: PlainCounter
    """Prediction-log records by result: written, dropped (queue full, disk error)."""
    upload_rounds: PlainCounter
    """Rounds uploading the spooled log, by result (a log on object storage only)."""
    upload_backlog: PlainGauge
    predictions: PredictionCounts
    """Predictions by output, in buckets or by class, as the routing file says."""
    instance_id: str
    """The router's name in /metrics (see `new_instance_id`): one for all its processes."""
    process_id: str
    """This process's own name, in /health: each of `--workers` confirms a routing file."""
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
    def create(
        cls,
        registry: CollectorRegistry,
        processes: int = 1,
        shared_folder: Path | None = None,
        instance_id: str = "",
    ) -> RouterMetrics:
        """Register the metrics on `registry` and pre-create the variant labels.

        `processes`: how many router processes share this one's port (`--workers`), keeping
        their values in `shared_folder` so that each answers for all (`SharedMetrics`), under
        the router's `instance_id` (one for all of them; a new one when none is given).
        """
        shared = SharedMetrics(ValueStore(shared_folder))

        def counter(family: Family) -> PlainCounter:
            return PlainCounter(shared, family.name, family.help, family.labels)

        def gauge(family: Family, aggregation: Aggregation) -> PlainGauge:
            return PlainGauge(shared, family.name, family.help, family.labels, aggregation)

        def histogram(family: Family, buckets: tuple[float, ...]) -> PlainHistogram:
            return PlainHistogram(shared, family.name, family.help, family.labels, buckets)

        metrics = cls(
            requests=counter(REQUESTS),
            duration=histogram(REQUEST_DURATION, LATENCY_BUCKETS),
            forced=counter(FORCED_REQUESTS),
            force_refused=counter(FORCE_REFUSED),
            client_limits=counter(CLIENT_LIMITS),
            upstream_errors=counter(UPSTREAM_ERRORS),
            failovers=counter(FAILOVERS),
            # Across processes: the newest weight and reload; healthy and reloaded only if
            # every process is; each process's own spool.
            weight=gauge(VARIANT_WEIGHT, "max"),
            healthy=gauge(UPSTREAM_HEALTHY, "min"),
            reload_ok=gauge(CONFIG_RELOAD_OK, "min"),
            reload_timestamp=gauge(CONFIG_RELOAD_TIMESTAMP, "max"),
            reloads=counter(CONFIG_RELOADS),
            shadow_requests=counter(SHADOW_REQUESTS),
            log_records=counter(PREDICTION_LOG_RECORDS),
            upload_rounds=counter(PREDICTION_LOG_UPLOADS),
            upload_backlog=gauge(PREDICTION_LOG_BACKLOG, "sum"),
            shadow_delta=histogram(SHADOW_DELTA, DELTA_BUCKETS),
            predictions=PredictionCounts(
                histogram(PREDICTION_VALUE, ()), counter(PREDICTION_CLASS)
            ),
            instance_id=instance_id or new_instance_id(),
            process_id=new_instance_id(),
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
        shared.register(registry)
        instance = Info(ROUTER_INSTANCE.name, ROUTER_INSTANCE.help, registry=registry)
        instance.info({"instance_id": metrics.instance_id, "processes": str(processes)})
        return metrics
