"""The rollout loop: set a step's weight, judge the next interval, advance, hold or roll back.

One rollout at a time. Its state is written to the state folder after every decision, so a
restarted controller resumes it at the same step (with a fresh window: the interval restarts).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import aiohttp

from common.files import write_atomically
from controller.changes import Controller
from controller.commit import audited
from controller.errors import ControllerError, InvalidChange
from controller.feedback import LabelBook
from controller.predictionbuckets import read_profiles
from controller.rollout.asking import Asking
from controller.rollout.gates import judge
from controller.rollout.histograms import categories_of
from controller.rollout.judgement import Buckets, LabelledRows, Verdict, Window
from controller.rollout.metrics import RolloutMetrics
from controller.rollout.planner import stable_deciles
from controller.rollout.promql import latency_history, window_from_prometheus
from controller.rollout.state import (
    ACTIVE,
    RolloutPlan,
    RolloutState,
    select_labelled,
)
from controller.rollout.steps import Progress, decide, wait_for_labels
from controller.rollout.window import (
    Snapshot,
    latency_since_start,
    take_snapshot,
    window_between,
)
from controller.verdicts import record_verdict

log = logging.getLogger("controller")
MAX_ERRORS_IN_ROW = 3
"""Unexpected errors in a row (a bug, a source answering nonsense) after which the rollout
fails closed: rolled back, as a window that cannot be judged is never a pass."""
ERROR_PAUSE_S = 1.0


class RolloutRunner:
    """Runs at most one rollout over the controller, judging windows of the routers' metrics."""

    def __init__(
        self,
        controller: Controller,
        session: aiohttp.ClientSession,
        state_path: Path,
        metrics: RolloutMetrics,
        labels: LabelBook | None = None,
    ) -> None:
        self.controller, self.session, self.path, self.metrics = (
            controller, session, state_path, metrics,
        )  # fmt: skip
        self.labels = labels
        """The labels taken so far, for the labels gate (None: labels are not judged)."""
        self.recording: set[asyncio.Task[None]] = set()
        self.state: RolloutState | None = None
        self.task: asyncio.Task[None] | None = None
        self.watch: asyncio.Task[None] | None = None
        """Polls the rollback webhook while the rollout runs (if the plan has one)."""
        self.wake = asyncio.Event()
        self.asking = Asking(session, controller.registry.settings.model_name, self._audit,
                             self._save)  # fmt: skip

    async def start(self, plan: RolloutPlan) -> RolloutState:
        """Begin a rollout of the current canary at the plan's first step."""
        if self.state is not None and self.state.status in ACTIVE:
            raise InvalidChange("a rollout is already running: abort it first")
        if plan.prometheus_url is None and not await self.controller.settings.routers.urls():
            raise InvalidChange(
                "a rollout needs routers to read metrics from (--router, --router-endpoints)"
                " or a Prometheus"
            )
        config = await self.controller.current()
        if config.canary is None:
            raise InvalidChange("there is no canary to roll out: deploy one first")
        if plan.limits.min_labels > 0 and self.labels is None:
            raise InvalidChange("min_labels: this controller takes no labels")
        state = RolloutState(plan, config.canary.version, stable_version=config.stable.version,
                             step_started_at=time.time(),
                             label_cursor=self.labels.rows_taken if self.labels else 0)  # fmt: skip
        # Stable's history before the rollout (labelled errors, latency): no blind first window.
        if self.labels is not None:
            state.evidence.stable_errors = self.labels.recent_errors("stable", state.stable_version)
        state.evidence.stable_latency = categories_of(
            await self._stable_latency(plan, state.stable_version)
        )
        if "pre-rollout" in plan.hooks:
            answer = await self.asking.ask(state, "pre-rollout")
            if not answer.ok:
                said = f"{answer.status or 'no answer'}: {answer.detail or 'nothing said'}"
                raise InvalidChange(f"the pre-rollout webhook said no ({said}); no traffic moved")
        await self.controller.set_weight(
            state.weight, f"rollout of v{state.canary_version}: step 1/{len(plan.steps)}"
        )
        self.state = state
        self._save()
        steps = ", ".join(f"{step:g}%" for step in plan.steps)
        await self._audit("rollout-start", f"v{state.canary_version} over {steps}",
                          plan=state.shown()["plan"])  # fmt: skip
        self._spawn()
        return state

    async def resume_saved(self) -> None:
        """After a restart: pick up a saved rollout that was running or paused."""
        try:
            state = RolloutState.from_json(json.loads(self.path.read_text()))
        except (OSError, ValueError, KeyError, TypeError, InvalidChange):
            return
        self.state = state
        self.metrics.show(state.status, state.step + 1)
        if state.status in ACTIVE:
            log.info("resuming the rollout of v%s at step %d", state.canary_version, state.step + 1)
            self._spawn()

    async def pause(self, reason: str = "") -> RolloutState:
        """Hold the weight where it is until resumed (audited with `reason`)."""
        state = self._active()
        state.status = "paused"
        state.message = f"paused by the operator: {reason or 'no reason given'}"
        self._save()
        await self._audit("rollout-pause", reason)
        return state

    async def resume(self, reason: str = "") -> RolloutState:
        """Go on from the current step with a fresh window (audited with `reason`)."""
        state = self._active()
        state.status = "running"
        state.message = f"resumed by the operator: {reason or 'no reason given'}"
        self._save()
        self.wake.set()
        await self._audit("rollout-resume", reason)
        return state

    async def _audit(
        self, action: str, reason: str, state: RolloutState | None = None, **details: Any
    ) -> None:
        """Record the rollout's own event: audit log and notifications (no before/after)."""
        record = {"action": action, "reason": reason, "before": None, "after": None, **details}
        state = state or self.state
        sinks = state.plan.sinks() if state is not None else ()
        await audited(self.controller.settings, record, sinks)

    async def confirm(self, reason: str = "", by: str = "an operator") -> RolloutState:
        """Confirm the promotion the rollout holds for (or will hold for), audited."""
        state = self._active()
        await self.asking.confirm(state, by, reason)
        return state

    async def _watch_rollback(self, state: RolloutState) -> None:
        """Roll back at once when the rollback webhook says yes."""
        said = await self.asking.rollback_asked(state)
        if state.status in ACTIVE:
            await self._stop_task()
            await self._roll_back(state, f"the rollback webhook asked for it ({said})")

    async def abort(self, reason: str = "") -> RolloutState:
        """Stop and roll back at once."""
        state = self._active()
        await self._stop_task()
        await self.controller.rollback(reason or "rollout aborted")
        self._finish(state, "aborted", "aborted by the operator; the canary gets no traffic")
        return state

    async def end_for_rollback(self, reason: str) -> None:
        """End a running rollout because the operator rolls back; the caller makes the rollback.

        Left running, the rollout would raise the weight again at its next step.
        """
        if self.state is None or self.state.status not in ACTIVE:
            return
        await self._stop_task()
        why = f"the operator rolled back: {reason or 'no reason given'}"
        self._finish(self.state, "aborted", why)

    async def close(self) -> None:
        """Stop the loop (the saved state lets the next controller resume).

        Verdicts being written to MLflow are finished first.
        """
        await self._stop_task()
        await asyncio.gather(*self.recording, return_exceptions=True)

    def active(self) -> bool:
        """Whether a rollout is running (or paused, or holding)."""
        return self.state is not None and self.state.status in ACTIVE

    def _active(self) -> RolloutState:
        if self.state is None or self.state.status not in ACTIVE:
            raise InvalidChange("no rollout is running")
        return self.state

    def _spawn(self) -> None:
        loop = asyncio.get_running_loop()
        self.task = loop.create_task(self._run())
        if self.state is not None and "rollback" in self.state.plan.hooks:
            self.watch = loop.create_task(self._watch_rollback(self.state))

    async def _stop_task(self) -> None:
        """Stop the judging loop and the rollback watcher (whichever of them is not calling)."""
        for task in (self.task, self.watch):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self.task = self.watch = None

    async def _run(self) -> None:
        """Judge one window after another until the rollout ends."""
        state = self.state
        assert state is not None  # noqa: S101 (spawned after the state is set)
        try:
            await self._apply_step_weight(state)
        except ControllerError as error:  # the next decision tries again
            log.warning("rollout: %s", error)
        errors_in_row, last_error = 0, ""
        while state.status in ACTIVE:
            try:
                if errors_in_row >= MAX_ERRORS_IN_ROW:
                    why = f"{errors_in_row} unexpected errors in a row, the last: {last_error}"
                    await self._roll_back(state, why)
                    return
                await self._one_window(state)
                errors_in_row = 0
            except Exception as error:  # a bug must not end the rollout silently: say it
                errors_in_row += 1
                last_error = f"{type(error).__name__}: {error}"
                log.exception("rollout: judging a window failed (%d in a row)", errors_in_row)
                state.message = f"judging a window failed ({last_error}); see the controller's log"
                self._save()
                await asyncio.sleep(ERROR_PAUSE_S)

    async def _one_window(self, state: RolloutState) -> None:
        """Wait out one interval (or a pause), then judge it and act."""
        if state.status == "paused":
            self.wake.clear()
            await self.wake.wait()
            return
        # Before a window starts, so that no window is judged on buckets changed within it.
        await self.controller.ensure_prediction_buckets()
        baseline = None if state.plan.prometheus_url else await self._snapshot()
        state.next_judgement_at = time.time() + state.plan.interval_s
        self._save()
        await asyncio.sleep(state.plan.interval_s)
        if state.status != "running":
            return
        verdict = None
        window = await self._window(state.plan, state.plan.interval_s, baseline)
        if window is not None:
            window = replace(window, labels=self._labelled_rows(state))
            verdict = judge(window, state.plan.limits, state.evidence)
            verdict = wait_for_labels(
                verdict, state.labelled_in_step, state.plan.limits.min_labels,
                time.time() - state.step_started_at, state.plan.label_wait_s,
            )  # fmt: skip
        problem = "" if verdict else "metrics could not be read"
        if "step" in state.plan.hooks:
            answer = await self.asking.ask(state, "step")
            if not answer.ok:  # a failed check, as a window that could not be judged
                said = f"{answer.status or 'no answer'}: {answer.detail or 'nothing said'}"
                verdict, problem = None, f"the step webhook said no ({said})"
        try:
            await self._decide(state, verdict, problem)
        except ControllerError as error:  # a change failed and was undone: try next window
            state.message = f"a change failed: {error}"
            log.warning("rollout: %s", state.message)
            self._save()

    def _labelled_rows(self, state: RolloutState) -> LabelledRows:
        """Return the rows of the rollout's two versions labelled since the last window."""
        if self.labels is None or state.plan.limits.min_labels <= 0:
            return LabelledRows()
        rows, state.label_cursor = self.labels.rows_since(state.label_cursor)
        labelled = select_labelled(rows, state.canary_version, state.stable_version)
        state.labelled_in_step += len(labelled.canary) + len(labelled.pairs)
        return labelled

    async def _window(
        self, plan: RolloutPlan, seconds: float, baseline: Snapshot | None
    ) -> Window | None:
        """Return the interval's data, or None if the metrics source could not be read."""
        if plan.prometheus_url:
            try:
                return await window_from_prometheus(self.session, plan.prometheus_url, seconds)
            except ControllerError as error:
                log.warning("rollout: %s", error)
                return None
        after = await self._snapshot()
        return window_between(baseline, after) if baseline and after else None

    async def measure(self, plan: RolloutPlan, seconds: float) -> Window:
        """Read `seconds` of traffic as a rollout reads a window (for `rollout plan`)."""
        baseline = None if plan.prometheus_url else await self._snapshot()
        await asyncio.sleep(seconds)
        window = await self._window(plan, seconds, baseline)
        if window is None:
            raise ControllerError("the traffic could not be read (see the controller's log)")
        return window

    async def stable_deciles(self) -> tuple[float, ...]:
        """Return stable's prediction deciles from the routers' profiles (for `rollout plan`).

        () if there are none or they cannot be read: the plan then simulates a normal.
        """
        config = await self.controller.current()
        try:
            routers = await self.controller.settings.routers.urls()
            profiles = await read_profiles(self.session, routers)
        except ControllerError as error:
            log.warning("rollout plan: stable's predictions: %s", error)
            return ()
        return stable_deciles(profiles, config.stable.version)

    async def _apply_step_weight(self, state: RolloutState) -> None:
        """Make the routing file show the current step's weight (after a restart, say)."""
        config = await self.controller.current()
        if state.status == "running" and config.canary and config.canary.weight != state.weight:
            steps = len(state.plan.steps)
            await self.controller.set_weight(
                state.weight, f"rollout of v{state.canary_version}: step {state.step + 1}/{steps}"
            )

    async def _stable_latency(self, plan: RolloutPlan, version: str) -> Buckets:
        """Return stable's latency before the rollout.

        Since each router started, or over Prometheus's last hour; none if it cannot be read
        (the first window then only sets the bound, as before there was any history).
        """
        if plan.prometheus_url:
            try:
                return await latency_history(self.session, plan.prometheus_url, "stable", version)
            except ControllerError as error:
                log.warning("rollout: stable's latency history: %s", error)
                return []
        snapshot = await self._snapshot()
        return latency_since_start(snapshot, "stable", version) if snapshot else []

    async def _snapshot(self) -> Snapshot | None:
        try:
            routers = await self.controller.settings.routers.urls()
            return await take_snapshot(self.session, routers)
        except ControllerError as error:
            log.warning("rollout: %s", error)
            return None

    async def _decide(self, state: RolloutState, verdict: Verdict | None, problem: str) -> None:
        """Advance, promote, hold or roll back on one window's verdict; record why."""
        outcome = verdict.outcome if verdict is not None else "fail"
        gates = [asdict(gate) for gate in verdict.gates] if verdict is not None else []
        for gate in gates:
            if gate["value"] is not None:
                self.metrics.gate_value.labels(gate["gate"]).set(gate["value"])
        entry = {
            "time": time.time(), "step": state.step + 1, "weight": state.weight,
            "outcome": outcome, "gates": gates, "problem": problem,
            "canary_requests": verdict.canary_requests if verdict is not None else None,
            "labelled": list(verdict.labelled) if verdict is not None else None,
            "variants": verdict.variants if verdict is not None else None,
        }  # fmt: skip
        state.history.append(entry)
        await self._audit("rollout-judgement", f"step {state.step + 1}: {outcome}", window=entry)
        steps = len(state.plan.steps)
        progress = Progress(state.step, state.failed_checks, state.insufficient_in_row)
        decision = decide(progress, verdict, steps, state.plan.max_failed_checks,
                          state.plan.max_insufficient_windows)  # fmt: skip
        state.failed_checks = progress.failed_checks
        state.insufficient_in_row = progress.insufficient_in_row
        moves = decision.action in ("advance", "promote")
        # Where it would go: the next step, or past the last one (promoting).
        going_to = len(state.plan.steps) if decision.action == "promote" else progress.step
        if moves and await self.asking.paused_by_plan(state, going_to):
            return
        if moves and await self.asking.held(state, going_to):
            self._save()
            return
        if decision.action == "promote":
            await self.controller.promote(f"rollout of v{state.canary_version}: all gates passed")
            self._finish(state, "promoted", f"v{state.canary_version} promoted")
        elif decision.action == "roll_back":
            await self._roll_back(state, decision.why)
        elif decision.action == "advance":
            state.step = progress.step
            state.step_started_at, state.labelled_in_step = time.time(), 0
            self._save()  # a controller killed now resumes here and applies this step's weight
            await self.controller.set_weight(
                state.weight, f"rollout of v{state.canary_version}: step {state.step + 1}/{steps}"
            )
        else:
            self._save()

    async def _roll_back(self, state: RolloutState, why: str) -> None:
        await self.controller.rollback(f"rollout of v{state.canary_version} rolled back: {why}")
        self._finish(state, "rolled_back", why)

    def _finish(self, state: RolloutState, status: str, message: str) -> None:
        state.status, state.message = status, message
        if self.watch is not None and self.watch is not asyncio.current_task():
            self.watch.cancel()  # the rollout is over: its rollback webhook is no longer asked
        log.info("rollout %s: %s", status, message)
        self._save()
        failed = sorted({gate["gate"] for entry in state.history[-1:] for gate in entry["gates"]
                         if not gate["passed"]})  # fmt: skip
        for work in (
            self._record_verdict(state),
            self._audit(f"rollout-{status.replace('_', '-')}", message, status=status,
                        canary_version=state.canary_version, failed_gates=failed),
        ):  # fmt: skip
            task = asyncio.get_running_loop().create_task(work)
            self.recording.add(task)
            task.add_done_callback(self.recording.discard)

    async def _record_verdict(self, state: RolloutState) -> None:
        """Write the verdict to MLflow.

        A registry that refuses costs the record, not the rollout: the state file and the
        audit log have it all the same.
        """
        try:
            state.verdict_run = await asyncio.to_thread(
                record_verdict, self.controller.registry.settings, state.to_json()
            )
        except Exception as error:  # noqa: BLE001 (MLflow raises many kinds)
            log.warning("rollout: the verdict was not written to MLflow: %s", error)
            return
        if self.state is state:
            self._save()

    def _save(self) -> None:
        """Write the state atomically and show it in the metrics."""
        state = self.state
        if state is None:
            return
        self.metrics.show(state.status, state.step + 1)
        write_atomically(self.path, json.dumps(state.to_json(), indent=1).encode())
