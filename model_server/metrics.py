"""Prometheus metrics of one model server, registered on an injected registry."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
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
        requests = Counter(
            "mlcanary_model_requests",
            "Scoring requests answered, by HTTP status.",
            ["version", "code"],
            registry=registry,
        )
        for code in PRE_CREATED_CODES:
            requests.labels(version, code)
        metrics = cls(
            requests=requests,
            duration=Histogram(
                "mlcanary_model_request_duration_seconds",
                "Time from request to answer of /invocations.",
                ["version"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            batch_rows=Histogram(
                "mlcanary_model_batch_rows",
                "Rows per predict call.",
                ["version"],
                buckets=BATCH_BUCKETS,
                registry=registry,
            ),
            batch_requests=Histogram(
                "mlcanary_model_batch_requests",
                "Requests per predict call.",
                ["version"],
                buckets=BATCH_BUCKETS,
                registry=registry,
            ),
            ready=Gauge(
                "mlcanary_model_ready",
                "1 once the model answered its input example, else 0.",
                ["version"],
                registry=registry,
            ),
        )
        for labelled in (metrics.duration, metrics.batch_rows, metrics.batch_requests):
            labelled.labels(version)  # zeros, not gaps, before the first request
        metrics.ready.labels(version).set(0)
        return metrics
