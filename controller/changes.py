"""Changes to the split: recorded under a short lock, made one at a time by one reconciler loop.

A change is validated against the split as it will be once the changes before it are made,
and recorded in the desired state (`controller.desired`); the caller then waits for the loop,
which makes each change in order: for a deploy, start (or adopt) and check its server; then
write the routing file atomically, wait until every known router reports it, move the
registry aliases, append the audit record; if a step fails, undo the steps done in reverse, so
the routing file and the aliases always describe the same split.

A rollback always wins at once: it supersedes every change still waiting, stops a deploy's
server that is still starting (it never had traffic, so there is nothing to look at), and is
made next, so it never waits behind a model server's start. The rollout engine asks for its
changes the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from asyncio import FIRST_COMPLETED
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from contracts.routing import Predictions, RoutingConfig
from controller.audit import append_audit, read_audit
from controller.checks import check_server, server_metadata
from controller.desired import WINS_AT_ONCE, Change, DesiredState
from controller.errors import ControllerError, InvalidChange, Superseded
from controller.predictionbuckets import cut, read_profiles
from controller.registry import Registry, aliases_for
from controller.routers import RouterDirectory, RouterList, reported_version, wait_for_routers
from controller.runtime import Runtime
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

    @property
    def desired_path(self) -> Path:
        """Where the changes asked for and not yet made are kept."""
        return self.audit_path.with_name("desired.json")


class Controller:
    """Records operator changes as desired state and makes them, in order, in one loop."""

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
        """Held only to validate and record a change: never while a change is made."""
        self.desired = DesiredState.load(settings.desired_path)
        self.wake = asyncio.Event()
        self.loop: asyncio.Task[None] | None = None
        self.starting: asyncio.Task[str] | None = None
        """The deploy's server start in progress, cancelled by a rollback."""
        self.committing: Change | None = None
        """The change being committed: a rollback does not supersede it but follows it."""
        self.in_progress: tuple[Change, RoutingConfig] | None = None
        """The change being committed and the split it writes, once that is known."""
        self.background: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Start the loop; changes a previous controller left pending are made first."""
        for change in self.desired.pending:
            change.outcome = asyncio.get_running_loop().create_future()
            _quiet(change.outcome)
            log.info("resuming change %d (%s) left by a previous controller", change.number,
                     change.describe())  # fmt: skip
        self.loop = asyncio.get_running_loop().create_task(self._reconcile())
        self.wake.set()

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
            "pending": [change.to_json() for change in self.desired.pending],
            "recent_changes": read_audit(self.settings.audit_path, last=5),
        }

    async def set_weight(
        self, weight: float, reason: str, *, detach: bool = False
    ) -> dict[str, Any]:
        """Set the canary's share of traffic (percent)."""
        return _made(await self._ask("weight", reason, {"weight": weight}, detach))

    async def set_prediction_buckets(
        self, predictions: Predictions, reason: str
    ) -> dict[str, Any] | None:
        """Make the routers count predictions as `predictions` says (if stable is still its).

        Return None when stable changed meanwhile (the buckets would be another model's).
        """
        arguments = {"predictions": predictions.model_dump(mode="json")}
        return await self._ask("prediction-buckets", reason, arguments)

    async def ensure_prediction_buckets(self) -> None:
        """Have the routers count predictions in buckets cut from stable's, if not yet.

        For rollouts (before each window) and the operator page (its distribution plot). Until
        stable has answered enough, nothing is cut: its predictions are not judged, and the
        verdict says so.
        """
        config = await self.current()
        if config.predictions is not None and config.predictions.version == config.stable.version:
            return
        try:
            routers = await self.settings.routers.urls()
            predictions = cut(await read_profiles(self.session, routers), config.stable.version)
            if predictions is not None:
                outputs = ", ".join(predictions.outputs)
                await self.set_prediction_buckets(
                    predictions, f"prediction buckets cut from v{predictions.version}'s"
                    f" predictions ({outputs})",
                )  # fmt: skip
        except ControllerError as error:
            log.warning("prediction buckets not cut yet: %s", error)

    async def rollback(self, reason: str) -> dict[str, Any]:
        """Send the canary no traffic at once, superseding the changes still waiting."""
        return _made(await self._ask("rollback", reason, {}))

    async def promote(self, reason: str, *, detach: bool = False) -> dict[str, Any]:
        """Make the canary stable (no canary after); drain and stop the old stable's server."""
        return _made(await self._ask("promote", reason, {}, detach))

    async def deploy(
        self, version: str, url: str | None, weight: float, reason: str, *, detach: bool = False
    ) -> dict[str, Any]:
        """Start (or adopt) a server for `version`, check it, and make it the canary."""
        model = (await self.current()).model
        if version == "latest":
            listed = await self.registry.versions()
            if not listed:
                raise InvalidChange(f"{model} has no versions in the registry")
            version = str(listed[-1]["version"])
        if not await self.registry.exists(version):
            raise InvalidChange(f"{model} has no version {version} in the registry")
        arguments = {"version": version, "url": url.rstrip("/") if url else None,
                     "weight": weight}  # fmt: skip
        return _made(await self._ask("deploy", reason, arguments, detach))

    async def _ask(
        self, action: str, reason: str, arguments: dict[str, Any], detach: bool = False
    ) -> dict[str, Any] | None:
        """Validate a change against the split to come, record it, and wait until it is made.

        With `detach`, answer as soon as it is recorded: `{"accepted": change}`.
        """
        async with self.lock:
            superseded = self._supersede(action, reason) if action in WINS_AT_ONCE else []
            projected = await self._projected()
            asked = Change(self.desired.next_number, action, reason, arguments)
            asked.target(projected)  # InvalidChange: nothing is recorded
            if action == "rollback" and projected.canary is None and not superseded:
                raise InvalidChange("there is no canary to roll back")
            if superseded:
                arguments = {**arguments, "superseded": superseded}
            change = self.desired.add(action, reason, arguments)
            change.outcome = asyncio.get_running_loop().create_future()
            await asyncio.to_thread(self.desired.save)
            self.wake.set()
        if detach:
            _quiet(change.outcome)
            return {"accepted": change.to_json()}
        # The change stands if the caller goes away: shielded, it is made all the same.
        return await asyncio.shield(change.outcome)

    def _supersede(self, action: str, reason: str) -> list[str]:
        """Drop every change still waiting (not one being committed); say what was dropped."""
        dropped = []
        for change in list(self.desired.pending):
            if change is self.committing:
                continue
            what = change.describe()
            if self.starting is not None and change is self.desired.pending[0]:
                self.starting.cancel()
                what += " (its model server, still starting, was stopped)"
            self.desired.pending.remove(change)
            _settle(change, error=Superseded(
                f"the {change.describe()} was superseded by a {action}"
                f"{f' ({reason})' if reason else ''} before it was made"
            ))  # fmt: skip
            dropped.append(what)
        return dropped

    async def _projected(self) -> RoutingConfig:
        """Return the split as it will be once every pending change is made."""
        split = await self.current()
        changes = list(self.desired.pending)
        if self.in_progress is not None and changes and changes[0] is self.in_progress[0]:
            split = self.in_progress[1]
            changes = changes[1:]
        for change in changes:
            split = change.target(split)
        return split

    async def _reconcile(self) -> None:
        """Make the pending changes one after another, for as long as the controller runs."""
        while True:
            if not self.desired.pending:
                await self.wake.wait()
                self.wake.clear()
                continue
            change = self.desired.pending[0]
            try:
                result = await self._make(change)
            except _Dropped:
                continue  # superseded while its server started: the superseder settled it
            except ControllerError as error:
                self._finish(change, error=error)
            except Exception as error:  # a bug must not stop the loop: say it, go on
                log.exception("change %d (%s) failed", change.number, change.describe())
                self._finish(change, error=ControllerError(
                    f"{change.describe()} failed unexpectedly: {error!r}"
                ))  # fmt: skip
            else:
                self._finish(change, result=result)

    async def _make(self, change: Change) -> dict[str, Any] | None:
        """Start and check a deploy's server, then commit the change."""
        started_url = None
        if change.action == "deploy":
            change.stage = "starting a model server"
            starting = asyncio.get_running_loop().create_task(self._prepare_server(change))
            self.starting = starting
            assert change.outcome is not None  # noqa: S101 (every pending change has one)
            try:
                # A rollback settles the outcome at once: the loop goes on to it, and the
                # cancelled start stops its server in the background (however long that takes).
                either: set[asyncio.Future[Any]] = {starting, change.outcome}
                await asyncio.wait(either, return_when=FIRST_COMPLETED)
                if change not in self.desired.pending:  # superseded: the superseder answered
                    self._later(self._stop_started(starting, change))
                    raise _Dropped
                started_url = starting.result()
            except asyncio.CancelledError:  # the controller is stopping: so is the start
                starting.cancel()
                raise
            finally:
                self.starting = None
        change.stage = "committing"
        self.committing = change  # from here on a rollback waits for it (a second at most)
        try:
            before = await self.current()
            after = change.target(before, started_url)
            if after == before and change.action == "prediction-buckets":
                return None
            self.in_progress = (change, after)
            result = await self._commit(change, before, after)
        except BaseException:
            if started_url is not None and change.arguments.get("url") is None:
                await asyncio.shield(self.runtime.retire(started_url))
            raise
        finally:
            self.committing, self.in_progress = None, None
        retired = {before.stable.url} | ({before.canary.url} if before.canary else set())
        for url in retired - {after.stable.url} - ({after.canary.url} if after.canary else set()):
            self._later(self._drain_and_retire(url))
        return result

    async def _stop_started(self, starting: asyncio.Task[str], change: Change) -> None:
        """Wait for a superseded deploy's start to end; stop the server if it came up."""
        await asyncio.wait({starting})
        if starting.cancelled() or starting.exception() is not None:
            return  # cancelled while starting: `provide` or `_prepare_server` stopped it
        if change.arguments.get("url") is None:
            await self.runtime.retire(starting.result())

    async def _prepare_server(self, change: Change) -> str:
        """Start (or adopt) the deploy's server and check it against stable; return its URL."""
        version, given = str(change.arguments["version"]), change.arguments.get("url")
        before = await self.current()
        stable = await server_metadata(self.session, before.stable.url)
        stable_inputs = stable.signature_inputs()
        url = await self.runtime.provide(version, given)
        try:
            await check_server(self.session, url, before.model, version, stable_inputs)
        except BaseException:
            if given is None:
                await asyncio.shield(self.runtime.retire(url))
            raise
        return url

    def _finish(
        self,
        change: Change,
        result: dict[str, Any] | None = None,
        error: ControllerError | None = None,
    ) -> None:
        """Take a made (or failed) change off the desired state and answer its caller."""
        if change in self.desired.pending:
            self.desired.pending.remove(change)
            self.desired.save()
        _settle(change, result, error)

    async def _commit(
        self, change: Change, before: RoutingConfig, after: RoutingConfig
    ) -> dict[str, Any]:
        """Write, confirm, move aliases, audit; undo the done steps if one fails."""
        action = change.action
        version = await self.settings.store.save(after)  # a refusal here changed nothing
        try:
            routers = await self.settings.routers.urls()
            await wait_for_routers(self.session, routers, version, self.settings.confirm_timeout_s)
            await self.registry.set_aliases(_aliases(after))
        except ControllerError as error:
            raise ControllerError(f"{action} failed: {error}; {await self._undo(before)}") from None
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
            written = await asyncio.to_thread(append_audit, self.settings.audit_path, record)
        except OSError as error:
            undone = await self._undo(before)
            raise ControllerError(
                f"{action} failed: cannot append to the audit log: {error.strerror or error}; "
                f"{undone}"
            ) from None
        log.info("%s: %s", action, change.reason or "(no reason given)")
        return written

    async def _undo(self, before: RoutingConfig) -> str:
        """Put the previous split back (file, then aliases); say how that went."""
        said = []
        try:
            await self.settings.store.save(before)
            said.append("the previous routing file is back")
        except ControllerError as error:
            said.append(f"the previous routing file could not be restored ({error})")
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
        """Stop the loop and finish background work (draining servers).

        Changes still pending stay recorded: the next controller makes them.
        """
        if self.loop is not None:
            self.loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.loop
        for change in self.desired.pending:
            _settle(change, error=ControllerError(
                f"the controller is stopping: the {change.describe()} is kept and made when it"
                " starts again"
            ))  # fmt: skip
        await asyncio.gather(*self.background, return_exceptions=True)


class _Dropped(Exception):
    """The change was superseded while its server was starting."""


def _settle(
    change: Change, result: dict[str, Any] | None = None, error: ControllerError | None = None
) -> None:
    """Answer whoever waits for `change` (nobody, after a restart or with --detach)."""
    outcome = change.outcome
    if outcome is None or outcome.done():
        return
    if error is not None:
        outcome.set_exception(error)
        _quiet(outcome)
    else:
        outcome.set_result(result)


def _quiet(outcome: asyncio.Future[Any]) -> None:
    """Nobody may ever read this outcome: do not log its error as never retrieved."""
    outcome.add_done_callback(lambda done: done.cancelled() or done.exception())


def _made(result: dict[str, Any] | None) -> dict[str, Any]:
    """Return the record a made change has (all but prediction buckets always have one)."""
    if result is None:
        raise ControllerError("the change had nothing to do")
    return result


def _aliases(config: RoutingConfig) -> Any:
    return aliases_for(config.stable.version, config.canary.version if config.canary else None)
