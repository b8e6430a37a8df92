"""What each admin change may carry, validated before anything is done: the request bodies.

Every field is bounded (pydantic), and a body is refused as a whole naming the field and the
problem (`body_of`). The rollout's defaults are stated once, in `RolloutPlan` and `GateLimits`,
and read here: a request leaves out what it keeps.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts.routing import validation_problems
from controller.errors import InvalidChange
from controller.rollout.judgement import GateLimits
from controller.rollout.state import RolloutPlan


class Change(BaseModel):
    """What every change may carry: why it is made (recorded in the audit log)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=1000)


class Confirmation(Change):
    """A rollout's promotion confirmed: by whom (a name the operator gives) and why."""

    by: str = Field(default="an operator", min_length=1, max_length=100)


class LongChange(Change):
    """A change that may wait for a model server to start."""

    detach: bool = False
    """Answer 202 as soon as the change is recorded, instead of when it is made."""


class DeployRequest(LongChange):
    """Make `version` the canary, on a new local server or the server at `url`."""

    version: str = Field(min_length=1, max_length=20, pattern=r"^([0-9]+|latest)$")
    url: str | None = None
    weight: float = Field(default=0.0, ge=0.0, le=100.0)


class WeightRequest(LongChange):
    """Give the canary `weight` percent of traffic."""

    weight: float = Field(ge=0.0, le=100.0)


PLAN, LIMITS = RolloutPlan(), GateLimits()
"""The rollout's defaults, stated once (RolloutPlan, GateLimits): a request leaves out what it
keeps."""


class RolloutRequest(Change):
    """Roll the canary out over `steps` (percent), judging each `interval_s` window."""

    steps: list[float | Literal["pause", "confirm"]] = Field(
        default=list(PLAN.steps), min_length=1, max_length=50
    )
    """Percents in order; `pause` holds until resumed, `confirm` until confirmed, before the
    next step (or before promoting, last)."""
    interval_s: float = Field(default=PLAN.interval_s, ge=0.2, le=86_400)
    min_requests: int = Field(default=LIMITS.min_requests, ge=1)
    max_error_rate: float = Field(default=LIMITS.max_error_rate, ge=0, le=1)
    false_alarm_rate: float = Field(default=LIMITS.false_alarm_rate, gt=0, lt=1)
    min_error_ratio: float = Field(default=LIMITS.min_error_ratio, ge=1)
    max_p99_ratio: float = Field(default=LIMITS.max_p99_ratio, ge=1)
    p99_tolerance_s: float = Field(default=LIMITS.p99_tolerance_s, ge=0)
    max_psi: float = Field(default=LIMITS.max_psi, ge=0)
    max_shadow_delta: float | None = Field(default=LIMITS.max_shadow_delta, ge=0)
    max_failed_checks: int = Field(default=PLAN.max_failed_checks, ge=1)
    max_insufficient_windows: int = Field(default=PLAN.max_insufficient_windows, ge=1)
    prometheus_url: str | None = Field(default=None, pattern=r"^https?://[^/?#]+/?$")
    min_labels: int = Field(default=LIMITS.min_labels, ge=0)
    label_wait_s: float = Field(default=PLAN.label_wait_s, ge=0, le=30 * 86_400)
    max_label_error_ratio: float = Field(default=LIMITS.max_label_error_ratio, ge=1)
    notify: list[str] = Field(default_factory=list, max_length=16)
    """This rollout's own notification sinks (webhook or slack+https URLs)."""
    confirm_promotion: bool = False
    """Hold before the first 100% step until an operator confirms (`rollout confirm`)."""
    hooks: dict[str, str] = Field(default_factory=dict, max_length=4)
    """Gate webhooks by name: pre-rollout, step, confirm-promotion, rollback."""

    def plan(self) -> RolloutPlan:
        """Return the plan this request describes (InvalidChange if it cannot run)."""
        limits = GateLimits(
            min_requests=self.min_requests, max_error_rate=self.max_error_rate,
            false_alarm_rate=self.false_alarm_rate, min_error_ratio=self.min_error_ratio,
            max_p99_ratio=self.max_p99_ratio,
            p99_tolerance_s=self.p99_tolerance_s,
            max_psi=self.max_psi, max_shadow_delta=self.max_shadow_delta,
            min_labels=self.min_labels, max_label_error_ratio=self.max_label_error_ratio,
        )  # fmt: skip
        percents: list[float] = []
        pauses: list[int] = []
        confirm_before: list[int] = []
        for step in self.steps:
            if step == "pause":
                pauses.append(len(percents))
            elif step == "confirm":
                confirm_before.append(len(percents))
            else:
                percents.append(float(step))
        if len(confirm_before) > 1:
            raise InvalidChange("steps: one confirm at most")
        return RolloutPlan(
            tuple(percents), self.interval_s, limits,
            self.max_failed_checks, self.max_insufficient_windows,
            self.prometheus_url.rstrip("/") if self.prometheus_url else None,
            self.label_wait_s, tuple(self.notify), self.confirm_promotion, dict(self.hooks),
            tuple(pauses), confirm_before[0] if confirm_before else None,
        )  # fmt: skip


class PlanRequest(RolloutRequest):
    """A rollout plan to check against `measure_s` seconds of the current traffic."""

    measure_s: float = Field(default=10.0, ge=1, le=600)


async def body_of(request: web.Request, model: type[BaseModel]) -> Any:
    """Parse and validate a JSON body; InvalidChange names the field and the problem."""
    raw = await request.read()
    try:
        document = json.loads(raw) if raw.strip() else {}
    except ValueError as error:
        raise InvalidChange(f"the body is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise InvalidChange("the body must be a JSON object")
    try:
        return model.model_validate(document)
    except ValidationError as error:
        raise InvalidChange(validation_problems(error, "(body)")) from None
