"""A rollout asking before it acts: its gate webhooks called and obeyed, a promotion confirmed.

The engine (`engine.py`) judges windows and moves weights; this decides what it must wait for
or stop on, beside the metrics: the webhooks' answers (`hooks.py`, Flagger's semantics) and a
person's confirmation (`rollout start --confirm-promotion`, then `rollout confirm` or the
page's button). Every call, answer, hold and confirmation is audited (and so notified) through
the engine's `Audit`; the state it changes is the engine's to save.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from controller.errors import InvalidChange
from controller.notifications import Sink
from controller.rollout.hooks import ROLLBACK_POLL_S, HookAnswer, HookCall, HookName, call_hook
from controller.rollout.state import ACTIVE, RolloutState


class Audit(Protocol):
    """Records one of the rollout's events (audit log and notifications)."""

    def __call__(
        self, action: str, reason: str, state: RolloutState | None = None, **details: Any
    ) -> Awaitable[None]:
        """Record `action`, with why and its details, about `state`."""
        ...


@dataclass
class Asking:
    """What a rollout asks, of webhooks and of people, and what it does with the answers."""

    session: aiohttp.ClientSession
    model: str
    audit: Audit
    save: Callable[[], None]

    async def confirm(self, state: RolloutState, by: str, reason: str) -> None:
        """Take a person's confirmation of the promotion (before or while the rollout holds)."""
        if not state.plan.needs_confirmation:
            raise InvalidChange(
                "this rollout does not wait for a confirmation (rollout start --confirm-promotion)"
            )
        if state.confirmation is not None:
            raise InvalidChange(f"already confirmed by {state.confirmation['by']}")
        await self._confirmed(state, by, reason)

    async def _confirmed(self, state: RolloutState, by: str, reason: str) -> None:
        state.confirmation = {"by": by, "reason": reason, "time": time.time()}
        state.held = False
        state.message = f"promotion confirmed by {by}: {reason or 'no reason given'}"
        self.save()
        await self.audit("rollout-confirm", reason, state, by=by)

    def _call(self, state: RolloutState, name: HookName) -> HookCall:
        return HookCall(name, self.model, state.canary_version, state.stable_version,
                        state.step + 1, state.weight, state.status)  # fmt: skip

    async def ask(self, state: RolloutState, name: HookName) -> HookAnswer:
        """Call one of the plan's webhooks about `state`; audit the call and its answer."""
        answer = await call_hook(self.session, state.plan.hooks[name], self._call(state, name))
        await self._audited(state, name, answer)
        return answer

    async def _audited(self, state: RolloutState, name: HookName, answer: HookAnswer) -> None:
        url = state.plan.hooks[name]
        shown = Sink(url, "webhook").shown
        await self.audit(
            "rollout-hook", f"{name}: {'yes' if answer.ok else 'no'}", state, hook=name,
            url=shown, status=answer.status, answer=answer.detail.replace(url, shown)[:500],
        )  # fmt: skip

    async def held(self, state: RolloutState, next_step: int) -> bool:
        """Whether the rollout waits for a confirmation before moving to `next_step`.

        It holds before the plan's hold point: a `confirm` step, else the first 100% step or
        promoting.

        The confirm-promotion webhook is asked each such window; a person confirms with
        `rollout confirm` or the page's button.
        """
        plan = state.plan
        reaching = next_step >= plan.hold_point
        if not plan.needs_confirmation or not reaching or state.confirmation is not None:
            return False
        if "confirm-promotion" in plan.hooks:
            answer = await self.ask(state, "confirm-promotion")
            if answer.ok:
                said = answer.detail or f"it answered {answer.status}"
                await self._confirmed(state, "the confirm-promotion webhook", said)
                return False
        if not state.held:
            state.held = True
            state.message = (
                f"holding at {state.weight:g}% until the rollout is confirmed (mlcanary rollout"
                " confirm, the page, or the confirm-promotion webhook)"
            )
            await self.audit("rollout-held", state.message, state)
        return True

    async def paused_by_plan(self, state: RolloutState, next_step: int) -> bool:
        """Pause before `next_step` if the plan says so (once: resuming goes past it)."""
        if next_step not in state.plan.pauses or next_step in state.paused_before:
            return False
        state.paused_before.append(next_step)
        state.status = "paused"
        where = f"step {next_step + 1}" if next_step < len(state.plan.steps) else "promoting"
        state.message = f"paused by the plan before {where}: resume with mlcanary rollout resume"
        self.save()
        await self.audit("rollout-pause", state.message, state, by="the plan")
        return True

    async def rollback_asked(self, state: RolloutState) -> str:
        """Poll the rollback webhook until it says yes; return what it said.

        Its first answer, and each change of answer, go to the audit log (not every poll).
        Ends only when the webhook says yes (the caller cancels it when the rollout ends).
        """
        last: tuple[bool, int | None] | None = None
        url = state.plan.hooks["rollback"]
        while True:
            answer = await call_hook(self.session, url, self._call(state, "rollback"))
            if (answer.ok, answer.status) != last:
                last = (answer.ok, answer.status)
                await self._audited(state, "rollback", answer)
            if answer.ok and state.status in ACTIVE:
                return answer.detail or str(answer.status)
            await asyncio.sleep(ROLLBACK_POLL_S)
