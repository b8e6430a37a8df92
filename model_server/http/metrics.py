"""Prometheus metrics of one model server, registered on an injected registry."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from contracts.metrics import (
    MODEL_BATCH_REQUESTS,
    MODEL_BATCH_ROWS,
    MODEL_READY,
    MODEL_REQUEST_DURATION,
    MODEL_REQUESTS,
    Family,
)

LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
)
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
PRE_CREATED_CODES = ("200", "400", "413", "415", "500", "503")


@dataclass(frozen=True)
class ServerMetrics:
    """What the model server counts: requests, latency, batches, readiness."""

    requests: Counter
    duration: Histogram
    batch_rows: Histogram
    batch_requests: Histogram
    ready: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry, version: str) -> ServerMetrics:
        """Register the metrics, labelled with the served version, on `registry`."""

        def histogram(family: Family, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(
                family.name, family.help, family.labels, buckets=buckets, registry=registry
            )

        requests = Counter(
            MODEL_REQUESTS.name, MODEL_REQUESTS.help, MODEL_REQUESTS.labels, registry=registry
        )
        for code in PRE_CREATED_CODES:
            requests.labels(version, code)
        metrics = cls(
            requests=requests,
            duration=histogram(MODEL_REQUEST_DURATION, LATENCY_BUCKETS),
            batch_rows=histogram(MODEL_BATCH_ROWS, BATCH_BUCKETS),
            batch_requests=histogram(MODEL_BATCH_REQUESTS, BATCH_BUCKETS),
            ready=Gauge(MODEL_READY.name, MODEL_READY.help, MODEL_READY.labels, registry=registry),
        )
        for labelled in (metrics.duration, metrics.batch_rows, metrics.batch_requests):
            labelled.labels(version)  # zeros, not gaps, before the first request
        metrics.ready.labels(version).set(0)
        return metrics
