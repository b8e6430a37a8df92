"""`mlcanary_rollout_*`: the rollout's step, status and each gate's last value, on /metrics."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge

from controller.rollout.state import STATUSES


@dataclass(frozen=True)
class RolloutMetrics:
    """`mlcanary_rollout_*` on the controller's /metrics."""

    step: Gauge
    gate_value: Gauge
    status: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> RolloutMetrics:
        """Register the rollout gauges."""
        metrics = cls(
            step=Gauge("mlcanary_rollout_step", "Current rollout step (1-based; 0: none).",
                       registry=registry),
            gate_value=Gauge("mlcanary_rollout_gate_value", "Last judged value of each gate.",
                             ["gate"], registry=registry),
            status=Gauge("mlcanary_rollout_status", "1 for the rollout's current status.",
                         ["status"], registry=registry),
        )  # fmt: skip
        for gate in ("error_rate", "error_ratio", "p99_ratio", "prediction_psi", "shadow_delta",
                     "label_errors"):  # fmt: skip
            metrics.gate_value.labels(gate)
        metrics.show("idle", 0)
        return metrics

    def show(self, status: str, step: int) -> None:
        """Reflect the status and the step."""
        for known in STATUSES:
            self.status.labels(known).set(1 if known == status else 0)
        self.step.set(step)
