"""A rollout's plan and its persisted state: what it is doing, step by step, and why.

Kept apart from the runner (`engine.py`) that moves it: the API, the CLI's views, the verdict
writer and the simulator read these without the loop.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from common.predictionlog import SHADOW
from controller.errors import InvalidChange
from controller.notifications import MAX_SINKS, Sink
from controller.rollout.evidence import RolloutEvidence
from controller.rollout.hooks import HOOKS
from controller.rollout.judgement import GateLimits, LabelledRows

if TYPE_CHECKING:
    from controller.quality import LabelledRow

ACTIVE = ("running", "paused")
STATUSES = ("idle", "running", "paused", "promoted", "rolled_back", "aborted")


@dataclass(frozen=True)
class RolloutPlan:
    """Steps, pace and limits of one rollout."""

    steps: tuple[float, ...] = (5.0, 10.0, 25.0, 50.0, 100.0)
    interval_s: float = 60.0
    limits: GateLimits = field(default_factory=GateLimits)
    max_failed_checks: int = 2
    """Windows that could not be judged (metrics unreadable, a per-window gate failed) that
    roll the canary back; a sequential gate that fails rolls it back at once."""
    max_insufficient_windows: int = 5
    """Windows in a row with too little traffic that fail the rollout (rolled back)."""
    prometheus_url: str | None = None
    """Read windows from this Prometheus (PromQL) instead of the routers' /metrics."""
    label_wait_s: float = 600.0
    """With `limits.min_labels`: how long a step waits for its labels before each window
    without them is a failed check."""
    notify: tuple[str, ...] = ()
    """This rollout's own notification sinks, besides the controller's (`--notify`)."""
    confirm_promotion: bool = False
    """Hold before the first 100% step (or before promoting) until an operator confirms."""
    hooks: dict[str, str] = field(default_factory=dict)
    """Webhooks the rollout calls and obeys, by name (see `controller.rollout.hooks`)."""
    pauses: tuple[int, ...] = ()
    """Steps (0-based; `len(steps)`: before promoting) the rollout pauses before, until an
    operator resumes it (`--steps 10,50,pause,100`)."""
    confirm_before: int | None = None
    """The step (as `pauses`) the rollout holds before for a confirmation (`--steps
    10,confirm,50,100`); by default, with `confirm_promotion` or the confirm-promotion webhook,
    the first 100% step, or promoting."""

    @property
    def needs_confirmation(self) -> bool:
        """Whether the rollout holds for a confirmation: asked, or a webhook gives it."""
        return (
            self.confirm_promotion
            or self.confirm_before is not None
            or "confirm-promotion" in self.hooks
        )

    @property
    def hold_point(self) -> int:
        """The step a confirmation is held before (`len(steps)`: before promoting)."""
        if self.confirm_before is not None:
            return self.confirm_before
        full = [index for index, step in enumerate(self.steps) if step >= 100]
        return full[0] if full else len(self.steps)

    def sinks(self) -> tuple[Sink, ...]:
        """Return the rollout's own sinks, read from `notify`."""
        return tuple(Sink.parse(url) for url in self.notify)

    def __post_init__(self) -> None:
        """Refuse plans that cannot run, naming the field."""
        if not self.steps or any(not 0 < s <= 100 for s in self.steps):
            raise InvalidChange("steps: each must be above 0 and at most 100")
        if list(self.steps) != sorted(set(self.steps)):
            raise InvalidChange("steps: must rise strictly, e.g. 5,10,25,50,100")
        if not 0.2 <= self.interval_s <= 86_400:
            raise InvalidChange("interval_s: must be from 0.2 s to one day")
        if self.label_wait_s < 0:
            raise InvalidChange("label_wait_s: must be 0 or more")
        if self.max_failed_checks < 1 or self.max_insufficient_windows < 1:
            raise InvalidChange("max_failed_checks and max_insufficient_windows: at least 1")
        if len(self.notify) > MAX_SINKS:
            raise InvalidChange(f"notify: at most {MAX_SINKS} URLs")
        for url in self.notify:
            try:
                Sink.parse(url)
            except ValueError as error:
                raise InvalidChange(f"notify: {error}") from None
        for point in (*self.pauses, *([self.confirm_before] if self.confirm_before else [])):
            if not 1 <= point <= len(self.steps):
                raise InvalidChange("steps: pause and confirm come after a step, not first")
        for name, url in self.hooks.items():
            if name not in HOOKS:
                raise InvalidChange(f"hooks: {name!r} is not one of {', '.join(HOOKS)}")
            try:
                if Sink.parse(url).kind != "webhook":
                    raise ValueError("a gate webhook is an http(s) URL")
            except ValueError as error:
                raise InvalidChange(f"hooks.{name}: {error}") from None


@dataclass
class RolloutState:
    """Where a rollout is, and what it decided so far (persisted as JSON)."""

    plan: RolloutPlan
    canary_version: str
    step: int = 0
    status: str = "running"
    failed_checks: int = 0
    insufficient_in_row: int = 0
    next_judgement_at: float = 0.0
    """Wall-clock time of the next judgement."""
    history: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""
    evidence: RolloutEvidence = field(default_factory=RolloutEvidence)
    """What the gates have accumulated over every window so far."""
    stable_version: str = ""
    step_started_at: float = 0.0
    """Wall-clock time the current step began (its wait for labels counts from it)."""
    labelled_in_step: int = 0
    """Canary rows labelled since the current step began."""
    label_cursor: int = 0
    """How many of the controller's labelled rows the rollout has read."""
    verdict_run: str = ""
    """The MLflow run the finished rollout's verdict was written to."""
    held: bool = False
    """Holding for a confirmation (the plan asks for one and none came yet)."""
    confirmation: dict[str, Any] | None = None
    """Who confirmed the promotion, why and when (`rollout confirm`, the page, a webhook)."""
    paused_before: list[int] = field(default_factory=list)
    """The plan's pauses taken so far (each once: resuming goes past it)."""

    @property
    def weight(self) -> float:
        """The weight of the current step."""
        return self.plan.steps[self.step]

    def shown(self) -> dict[str, Any]:
        """Return the state as the API and the page show it: notification URLs' secrets hidden."""
        data = self.to_json()
        data["plan"]["notify"] = [sink.shown for sink in self.plan.sinks()]
        data["plan"]["hooks"] = {name: Sink(url, "webhook").shown
                                 for name, url in self.plan.hooks.items()}  # fmt: skip
        return data

    def to_json(self) -> dict[str, Any]:
        """Return the state as JSON-able data (as persisted: every URL whole)."""
        data = asdict(self)
        data["weight"] = self.weight
        data["evidence"] = self.evidence.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RolloutState:
        """Rebuild a state saved by `to_json`."""
        plan = data["plan"]
        return cls(
            plan=RolloutPlan(
                steps=tuple(plan["steps"]),
                interval_s=plan["interval_s"],
                limits=GateLimits(**plan["limits"]),
                max_failed_checks=plan["max_failed_checks"],
                max_insufficient_windows=plan["max_insufficient_windows"],
                prometheus_url=plan.get("prometheus_url"),
                label_wait_s=plan.get("label_wait_s", RolloutPlan.label_wait_s),
                notify=tuple(plan.get("notify", ())),
                confirm_promotion=plan.get("confirm_promotion", False),
                hooks=dict(plan.get("hooks", {})),
                pauses=tuple(plan.get("pauses", ())),
                confirm_before=plan.get("confirm_before"),
            ),
            canary_version=data["canary_version"],
            step=data["step"],
            status=data["status"],
            failed_checks=data["failed_checks"],
            insufficient_in_row=data["insufficient_in_row"],
            next_judgement_at=data["next_judgement_at"],
            history=data["history"],
            message=data.get("message", ""),
            evidence=RolloutEvidence.from_json(data.get("evidence") or {}),
            stable_version=data.get("stable_version", ""),
            step_started_at=data.get("step_started_at", 0.0),
            labelled_in_step=data.get("labelled_in_step", 0),
            label_cursor=data.get("label_cursor", 0),
            verdict_run=data.get("verdict_run", ""),
            held=data.get("held", False),
            confirmation=data.get("confirmation"),
            paused_before=list(data.get("paused_before", [])),
        )


def select_labelled(
    rows: list[LabelledRow], canary_version: str, stable_version: str
) -> LabelledRows:
    """Return the rollout's two versions' labelled rows, as its labels gate judges them.

    The canary's and stable's answers to clients are two samples; the canary's shadow answers
    are paired with stable's rows of the same requests (those stable rows are then only in
    the pairs). Other versions' rows (before a promotion, say) are left out.
    """
    canary = [r for r in rows if r.variant == "canary" and r.version == canary_version]
    pairs = [
        (r, r.paired) for r in rows
        if r.variant == SHADOW and r.version == canary_version and r.paired is not None
        and r.paired.variant == "stable" and r.paired.version == stable_version
    ]  # fmt: skip
    paired = {id(stable_row) for _, stable_row in pairs}
    stable = [
        r for r in rows
        if r.variant == "stable" and r.version == stable_version and id(r) not in paired
    ]  # fmt: skip
    return LabelledRows(
        canary=tuple(abs(r.error) for r in canary),
        stable=tuple(abs(r.error) for r in stable),
        classes=any(r.classes for r in [*canary, *stable, *(c for c, _ in pairs)]),
        pairs=tuple((abs(c.error), abs(s.error)) for c, s in pairs),
    )
