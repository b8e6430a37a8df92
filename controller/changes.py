"""Changes to the split, one at a time: validate, write, confirm, move aliases, audit; or undo.

The routing file is the source of truth. A change writes it atomically, waits until every
known router reports the new version, moves the registry aliases, then appends the audit
record. If a step fails, the steps done are undone in reverse, so the routing file and the
aliases always describe the same split, and the error says what happened.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import ValidationError

from controller.audit import append_audit, read_audit
from controller.checks import check_server, server_metadata, signature_inputs
from controller.errors import ControllerError, InvalidChange
from controller.registry import Registry, aliases_for
from controller.routers import RouterDirectory, RouterList, reported_version, wait_for_routers
from controller.runtime import Runtime
from controller.stores import RoutingStore
from router.config import Predictions, RoutingConfig, validation_problems

log = logging.getLogger("controller")


@dataclass(frozen=True)
class ChangeSettings:
    """Where the split lives and who must confirm it."""

    store: RoutingStore
    audit_path: Path
    routers: RouterDirectory = field(default_factory=RouterList)
    confirm_timeout_s: float = 5.0
    drain_s: float = 1.0


class Controller:
    """Applies operator changes to the split, serialized by one lock."""

    def __init__(
        self,
        settings: ChangeSettings,
        runtime: Runtime,
        registry: Registry,
        session: aiohttp.ClientSession,
    ) -> None:
        self.settings, self.runtime, self.registry, self.session = (
            settings, runtime, registry, session,
        )  # fmt: skip
        self.lock = asyncio.Lock()
        self.background: set[asyncio.Task[None]] = set()

    async def current(self) -> RoutingConfig:
        """Return the split the routing file holds now."""
        return (await self.settings.store.load())[0]

    async def status(self) -> dict[str, Any]:
        """Describe the split, the routers' view of it, the aliases and the last changes."""
        config, version = await self.settings.store.load()
        routers = await self.settings.routers.urls()
        reported = await asyncio.gather(
            *(reported_version(self.session, router) for router in routers)
        )
        try:
            aliases: dict[str, Any] = vars(await self.registry.aliases())
        except ControllerError as error:
            aliases = {"error": str(error)}
        return {
            "model": config.model,
            "stable": config.stable.model_dump(),
            "canary": config.canary.model_dump() if config.canary else None,
            "config_version": version,
            "routers": {
                router: {"config_version": got, "in_step": got == version}
                for router, got in zip(routers, reported, strict=True)
            },
            "aliases": aliases,
            "runtime": self.runtime.kind,
            "recent_changes": read_audit(self.settings.audit_path, last=5),
        }

    async def set_weight(self, weight: float, reason: str) -> dict[str, Any]:
        """Set the canary's share of traffic (percent)."""
        async with self.lock:
            before = await self.current()
            if before.canary is None:
                raise InvalidChange("there is no canary to weight: deploy one first")
            after = _with(before, canary={**before.canary.model_dump(), "weight": weight})
            return await self._commit("weight", reason, before, after)

    async def set_prediction_buckets(
        self, predictions: Predictions, reason: str
    ) -> dict[str, Any] | None:
        """Make the routers count predictions as `predictions` says (if stable is still its).

        Return None when stable changed meanwhile (the buckets would be another model's).
        """
        async with self.lock:
            before = await self.current()
            if before.stable.version != predictions.version:
                return None
            after = _with(before, predictions=predictions.model_dump(mode="json"))
            return await self._commit("prediction-buckets", reason, before, after)

    async def rollback(self, reason: str) -> dict[str, Any]:
        """Send the canary no traffic at once (its server is kept for a look)."""
        async with self.lock:
            before = await self.current()
            if before.canary is None:
                raise InvalidChange("there is no canary to roll back")
            after = _with(before, canary={**before.canary.model_dump(), "weight": 0.0})
            return await self._commit("rollback", reason, before, after)

    async def promote(self, reason: str) -> dict[str, Any]:
        """Make the canary stable (no canary after); drain and stop the old stable's server."""
        async with self.lock:
            before = await self.current()
            if before.canary is None:
                raise InvalidChange("there is no canary to promote")
            stable = {"url": before.canary.url, "version": before.canary.version}
            after = _with(before, stable=stable, canary=None)
            result = await self._commit("promote", reason, before, after)
            if before.stable.url != after.stable.url:
                self._later(self._drain_and_retire(before.stable.url))
            return result

    async def deploy(
        self, version: str, url: str | None, weight: float, reason: str
    ) -> dict[str, Any]:
        """Start (or adopt) a server for `version`, check it, and make it the canary."""
        async with self.lock:
            before = await self.current()
            if version == "latest":
                listed = await self.registry.versions()
                if not listed:
                    raise InvalidChange(f"{before.model} has no versions in the registry")
                version = str(listed[-1]["version"])
            if version == before.stable.version:
                raise InvalidChange(f"version {version} is already stable")
            _with(before, canary={"url": url or "http://placeholder", "version": version,
                                  "weight": weight})  # fmt: skip
            if not await self.registry.exists(version):
                raise InvalidChange(f"{before.model} has no version {version} in the registry")
            stable_inputs = signature_inputs(await server_metadata(self.session, before.stable.url))
            new_url = await self.runtime.provide(self.session, version, url)
            try:
                await check_server(self.session, new_url, before.model, version, stable_inputs)
                after = _with(before, canary={"url": new_url, "version": version, "weight": weight})
                result = await self._commit("deploy", reason, before, after)
            except BaseException:
                if url is None:
                    await self.runtime.retire(new_url)
                raise
            old = before.canary
            if old is not None and old.url != new_url:
                self._later(self._drain_and_retire(old.url))
            return result

    async def _commit(
        self, action: str, reason: str, before: RoutingConfig, after: RoutingConfig
    ) -> dict[str, Any]:
        """Write, confirm, move aliases, audit; undo the done steps if one fails."""
        version = await self.settings.store.save(after)  # a refusal here changed nothing
        try:
            routers = await self.settings.routers.urls()
            await wait_for_routers(self.session, routers, version, self.settings.confirm_timeout_s)
            await self.registry.set_aliases(_aliases(after))
        except ControllerError as error:
            raise ControllerError(f"{action} failed: {error}; {await self._undo(before)}") from None
        record = {
            "action": action,
            "reason": reason,
            "before": before.model_dump(mode="json"),
            "after": after.model_dump(mode="json"),
            "config_version": version,
        }
        try:
            written = await asyncio.to_thread(append_audit, self.settings.audit_path, record)
        except OSError as error:
            undone = await self._undo(before, aliases_too=True)
            raise ControllerError(
                f"{action} failed: cannot append to the audit log: {error.strerror or error}; "
                f"{undone}"
            ) from None
        log.info("%s: %s", action, reason or "(no reason given)")
        return written

    async def _undo(self, before: RoutingConfig, aliases_too: bool = True) -> str:
        """Put the previous split back (file, then aliases); say how that went."""
        said = []
        try:
            await self.settings.store.save(before)
            said.append("the previous routing file is back")
        except ControllerError as error:
            said.append(f"the previous routing file could not be restored ({error})")
        if aliases_too:
            try:
                await self.registry.set_aliases(_aliases(before))
                said.append("the aliases are as before")
            except ControllerError as error:
                said.append(f"the aliases could not be restored: {error}")
        return ", ".join(said)

    async def reconcile_aliases(self) -> None:
        """Point the aliases at the routing file's split (after a restart, say)."""
        await self.registry.set_aliases(_aliases(await self.current()))

    def _later(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _drain_and_retire(self, url: str) -> None:
        """Give requests in flight time to finish, then stop the server if nothing uses it."""
        await asyncio.sleep(self.settings.drain_s)
        config = await self.current()
        in_use = {config.stable.url} | ({config.canary.url} if config.canary else set())
        if url not in in_use:
            await self.runtime.retire(url)

    async def close(self) -> None:
        """Finish background work (draining servers)."""
        await asyncio.gather(*self.background, return_exceptions=True)


def _aliases(config: RoutingConfig) -> Any:
    return aliases_for(config.stable.version, config.canary.version if config.canary else None)


def _with(config: RoutingConfig, **changes: Any) -> RoutingConfig:
    """Return `config` with fields replaced, validated whole (InvalidChange names the field)."""
    document = {**config.model_dump(mode="json", exclude_none=True), **changes}
    if document.get("canary") is None:
        document.pop("canary", None)
    try:
        return RoutingConfig.model_validate(document)
    except ValidationError as error:
        raise InvalidChange(validation_problems(error)) from None
