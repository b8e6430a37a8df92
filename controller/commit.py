"""Committing one change to the split: all its steps done, or none left standing.

The reconciler (`controller.changes`) decides what the split becomes; this module makes it so:
write the routing file atomically, wait until every known router reports it, move the registry
aliases, append the audit record. If a step fails, the steps done are undone in reverse (the
file, then the aliases), so that the routing file and the aliases always describe the same
split, and the error says how the undoing went.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from contracts.routing import RoutingConfig
from controller.audit import append_audit
from controller.desired import Change
from controller.errors import ControllerError
from controller.notifications import Notifier, Sink
from controller.registry import Aliases, Registry, aliases_for
from controller.routers import RouterDirectory, RouterList, wait_for_routers
from controller.stores import RoutingStore

log = logging.getLogger("controller")


@dataclass(frozen=True)
class ChangeSettings:
    """Where the split lives and who must confirm it."""

    store: RoutingStore
    audit_path: Path
    routers: RouterDirectory = field(default_factory=RouterList)
    confirm_timeout_s: float = 5.0
    drain_s: float = 1.0
    notifier: Notifier | None = None
    """Where every audited event is also sent (None: nowhere)."""

    @property
    def desired_path(self) -> Path:
        """Where the changes asked for and not yet made are kept."""
        return self.audit_path.with_name("desired.json")


async def commit(
    settings: ChangeSettings,
    registry: Registry,
    session: aiohttp.ClientSession,
    change: Change,
    before: RoutingConfig,
    after: RoutingConfig,
) -> dict[str, Any]:
    """Write, confirm, move aliases, audit; undo the done steps if one fails.

    Return the audit record written.
    """
    action = change.action
    version = await settings.store.save(after)  # a refusal here changed nothing
    try:
        routers = await settings.routers.urls()
        await wait_for_routers(session, routers, version, settings.confirm_timeout_s)
        await registry.set_aliases(aliases_of(after))
    except ControllerError as error:
        undone = await undo(settings, registry, before)
        raise ControllerError(f"{action} failed: {error}; {undone}") from None
    record = {
        "action": action,
        "reason": change.reason,
        "before": before.model_dump(mode="json"),
        "after": after.model_dump(mode="json"),
        "config_version": version,
        "change": change.number,
    }
    if change.arguments.get("superseded"):
        record["superseded"] = change.arguments["superseded"]
    try:
        written = await audited(settings, record)
    except OSError as error:
        undone = await undo(settings, registry, before)
        raise ControllerError(
            f"{action} failed: cannot append to the audit log: {error.strerror or error}; {undone}"
        ) from None
    log.info("%s: %s", action, change.reason or "(no reason given)")
    return written


async def audited(
    settings: ChangeSettings, record: dict[str, Any], also: tuple[Sink, ...] = ()
) -> dict[str, Any]:
    """Append `record` to the audit log, then publish it (and to `also`, a rollout's sinks).

    Every event people are told of is one the audit log holds: one place records, one sends.
    """
    written = await asyncio.to_thread(append_audit, settings.audit_path, record)
    if settings.notifier is not None:
        settings.notifier.publish(written, also)
    return written


async def undo(settings: ChangeSettings, registry: Registry, before: RoutingConfig) -> str:
    """Put the previous split back (file, then aliases); say how that went."""
    said = []
    try:
        await settings.store.save(before)
        said.append("the previous routing file is back")
    except ControllerError as error:
        said.append(f"the previous routing file could not be restored ({error})")
    try:
        await registry.set_aliases(aliases_of(before))
        said.append("the aliases are as before")
    except ControllerError as error:
        said.append(f"the aliases could not be restored: {error}")
    return ", ".join(said)


def aliases_of(config: RoutingConfig) -> Aliases:
    """Return the registry aliases that describe `config`'s split."""
    return aliases_for(config.stable.version, config.canary.version if config.canary else None)
