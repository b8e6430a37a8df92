"""Webhooks a rollout calls and obeys, with Flagger's semantics.

- `pre-rollout`: called once before the first step; anything but a 2xx stops the rollout before
  any traffic moves (an offline evaluation, a change freeze).
- `step`: called after each window is measured; anything but a 2xx is a failed check, under
  the same fail-closed rules as a window whose metrics could not be read (`max_failed_checks`).
- `confirm-promotion`: while the rollout holds for a confirmation (before its first 100% step,
  or before promoting), called each window; a 2xx confirms.
- `rollback`: polled every `ROLLBACK_POLL_S` while the rollout runs; a 2xx rolls back at once.

Each is a POST of the rollout's situation as JSON (`HookCall`), with `HOOK_TIMEOUT_S` to answer;
a receiver that cannot be reached is asked once more before its answer counts as a refusal
(`pre-rollout`, `step`) or as "not yet" (`confirm-promotion`, `rollback`). The engine writes
every call and answer to the audit log (the rollback poll: its first answer and each change).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Literal

import aiohttp

HookName = Literal["pre-rollout", "step", "confirm-promotion", "rollback"]
HOOKS: tuple[HookName, ...] = ("pre-rollout", "step", "confirm-promotion", "rollback")
HOOK_TIMEOUT_S = 5.0
ROLLBACK_POLL_S = 0.5


@dataclass(frozen=True)
class HookCall:
    """What a webhook is told: which hook, which model and versions, where the rollout is."""

    hook: HookName
    model: str
    canary_version: str
    stable_version: str
    step: int
    """1-based."""
    weight: float
    status: str


@dataclass(frozen=True)
class HookAnswer:
    """Whether the webhook said yes (a 2xx), its status, and what it said or why it failed."""

    ok: bool
    status: int | None
    detail: str


async def call_hook(session: aiohttp.ClientSession, url: str, call: HookCall) -> HookAnswer:
    """POST `call` to `url`; a receiver that cannot be reached is asked once more."""
    body = json.dumps(asdict(call)).encode()
    headers = {"Content-Type": "application/json", "X-Mlcanary-Hook": call.hook}
    failure = ""
    for _attempt in (1, 2):
        try:
            async with session.post(
                url, data=body, headers=headers, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=HOOK_TIMEOUT_S),
            ) as answer:  # fmt: skip
                said = (await answer.content.read(500)).decode(errors="replace").strip()
                return HookAnswer(200 <= answer.status < 300, answer.status, said)
        except (aiohttp.ClientError, TimeoutError) as error:
            failure = str(error) or type(error).__name__
    return HookAnswer(False, None, f"cannot be reached: {failure}")
