"""The desired state: the changes asked for and not yet made, in order, kept in the state folder.

An API call (or the rollout engine) validates its change against the split as it will be once
the changes before it are made, appends it here under a short lock, and waits for the
reconciler (`controller.changes`) to make it. The list is written to `desired.json` atomically
on every change to it, so a controller killed mid-change starts again with what was asked and
makes it: the split converges on what was asked, not on what happened to be done.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from common.files import write_atomically
from contracts.routing import (
    MODEL_SERVER_PROTOCOLS,
    Predictions,
    RoutingConfig,
    validation_problems,
)
from controller.errors import ControllerError, InvalidChange

log = logging.getLogger("controller")
STARTING_URL = "http://starting.invalid"
"""Where a canary whose server is still starting is said to be, to validate what follows it."""
ACTIONS = ("deploy", "weight", "promote", "rollback", "prediction-buckets")
WINS_AT_ONCE = ("rollback",)
"""Changes that supersede every change still waiting, and stop a deploy's starting server."""


@dataclass
class Change:
    """One change asked for: what, why, and (once made) what it did."""

    number: int
    action: str
    reason: str
    arguments: dict[str, Any] = field(default_factory=dict)
    """deploy: version, url (None: start a server), weight; weight: weight;
    prediction-buckets: predictions."""
    outcome: asyncio.Future[dict[str, Any] | None] | None = None
    """Set by the reconciler: the audit record, or the error; None for a change that had
    nothing left to do (prediction buckets of a model no longer stable)."""
    stage: str = "waiting"
    """What the reconciler is doing for it: waiting, starting a model server, committing."""

    def describe(self) -> str:
        """Name the change for an operator: `deploy of v3`, `weight 20`, `promote`."""
        if self.action == "deploy":
            return f"deploy of v{self.arguments['version']}"
        if self.action == "weight":
            return f"weight {self.arguments['weight']:g}"
        return self.action

    def settle(
        self, result: dict[str, Any] | None = None, error: ControllerError | None = None
    ) -> None:
        """Answer whoever waits for the change (nobody, after a restart or with --detach)."""
        outcome = self.outcome
        if outcome is None or outcome.done():
            return
        if error is not None:
            outcome.set_exception(error)
            unread(outcome)
        else:
            outcome.set_result(result)

    def to_json(self) -> dict[str, Any]:
        """Return what is saved and shown (`/api/status`'s `pending`)."""
        return {"number": self.number, "action": self.action, "reason": self.reason,
                "arguments": self.arguments, "stage": self.stage}  # fmt: skip

    def target(self, before: RoutingConfig, started_url: str | None = None) -> RoutingConfig:
        """Return the split after this change, from `before` (InvalidChange if it cannot be).

        `started_url`: where a deploy's new server listens (None while it is still starting).
        """
        canary = before.canary
        if self.action == "weight":
            if canary is None:
                raise InvalidChange("there is no canary to weight: deploy one first")
            return with_changes(before, canary={**canary.model_dump(),
                                                "weight": self.arguments["weight"]})  # fmt: skip
        if self.action == "rollback":
            if canary is None:
                return before  # a rollback that only superseded a deploy still starting
            return with_changes(before, canary={**canary.model_dump(), "weight": 0.0})
        if self.action == "promote":
            if canary is None:
                raise InvalidChange("there is no canary to promote")
            stable = canary.model_dump(mode="json", exclude_none=True, exclude={"weight"})
            return with_changes(before, stable=stable, canary=None)
        if self.action == "deploy":
            version = str(self.arguments["version"])
            if version == before.stable.version:
                raise InvalidChange(f"version {version} is already stable")
            url = self.arguments.get("url") or started_url or STARTING_URL
            # Checked as one of mlcanary's model servers (its /metadata): it speaks both.
            deployed = {"url": url, "version": version, "weight": self.arguments["weight"],
                        "protocols": list(MODEL_SERVER_PROTOCOLS)}  # fmt: skip
            return with_changes(before, canary=deployed)
        if self.action == "prediction-buckets":
            predictions = Predictions.model_validate(self.arguments["predictions"])
            if before.stable.version != predictions.version:
                return before  # stable changed meanwhile: the buckets would be another model's
            return with_changes(before, predictions=predictions.model_dump(mode="json"))
        raise InvalidChange(f"unknown change {self.action!r}")


def with_changes(config: RoutingConfig, **changes: Any) -> RoutingConfig:
    """Return `config` with fields replaced, validated whole (InvalidChange names the field)."""
    document = {**config.model_dump(mode="json", exclude_none=True), **changes}
    if document.get("canary") is None:
        document.pop("canary", None)
    try:
        return RoutingConfig.model_validate(document)
    except ValidationError as error:
        raise InvalidChange(validation_problems(error)) from None


@dataclass
class DesiredState:
    """The changes waiting to be made, oldest first, and the number the next one gets."""

    path: Path
    pending: list[Change] = field(default_factory=list)
    next_number: int = 1

    @classmethod
    def load(cls, path: Path) -> DesiredState:
        """Read what a previous controller left (nothing, if the file is missing or unreadable)."""
        state = cls(path)
        try:
            saved = json.loads(path.read_text())
            state.next_number = int(saved["next"])
            state.pending = [
                Change(
                    int(item["number"]),
                    str(item["action"]),
                    str(item["reason"]),
                    dict(item["arguments"]),
                )
                for item in saved["pending"]
                if item["action"] in ACTIONS
            ]
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("%s cannot be read (%s); starting with no pending changes", path, error)
        return state

    def add(self, action: str, reason: str, arguments: dict[str, Any]) -> Change:
        """Append a change with the next number (not yet saved)."""
        change = Change(self.next_number, action, reason, arguments)
        self.next_number += 1
        self.pending.append(change)
        return change

    def save(self) -> None:
        """Write the pending changes whole (temp file, fsync, rename)."""
        document = {"next": self.next_number,
                    "pending": [change.to_json() for change in self.pending]}  # fmt: skip
        write_atomically(self.path, json.dumps(document, indent=1).encode())


def unread(outcome: asyncio.Future[Any]) -> None:
    """Nobody may ever read this outcome: do not log its error as never retrieved."""
    outcome.add_done_callback(lambda done: done.cancelled() or done.exception())
