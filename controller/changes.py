"""Changes to the split: recorded under a short lock, made one at a time by one reconciler loop.

A change is validated against the split as it will be once the changes before it are made,
and recorded in the desired state (`controller.desired`); the caller then waits for the loop,
which makes each change in order: for a deploy, start (or adopt) and check its server
(`controller.changeservers`); then commit it (`controller.commit`: routing file, routers,
aliases, audit, all or none).

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
from datetime import UTC, datetime
from typing import Any

import aiohttp

from contracts.routing import Predictions, RoutingConfig
from controller.audit import read_audit
from controller.changeservers import drain_and_retire, prepare_server, stop_when_started
from controller.commit import ChangeSettings, aliases_of, commit
from controller.desired import WINS_AT_ONCE, Change, DesiredState, unread
from controller.errors import ControllerError, InvalidChange, Superseded
from controller.predictionbuckets import cut, read_profiles
from controller.registry import Registry
from controller.routers import reported_version
from controller.runtime import Runtime

log = logging.getLogger("controller")


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
            unread(change.outcome)
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
            "notifications": (
                self.settings.notifier.state()
                if self.settings.notifier is not None
                else {"sinks": [], "signed": False, "recent": []}
            ),
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
            unread(change.outcome)
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
            change.settle(error=Superseded(
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
                self._tell_failure(change, error)
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
            version, given = str(change.arguments["version"]), change.arguments.get("url")
            preparing = prepare_server(self.runtime, self.session, self.current, version, given)
            starting = asyncio.get_running_loop().create_task(preparing)
            self.starting = starting
            assert change.outcome is not None  # noqa: S101 (every pending change has one)
            try:
                # A rollback settles the outcome at once: the loop goes on to it, and the
                # cancelled start stops its server in the background (however long that takes).
                either: set[asyncio.Future[Any]] = {starting, change.outcome}
                await asyncio.wait(either, return_when=FIRST_COMPLETED)
                if change not in self.desired.pending:  # superseded: the superseder answered
                    self._later(stop_when_started(self.runtime, starting, given))
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
            result = await commit(self.settings, self.registry, self.session, change, before, after)
        except BaseException:
            if started_url is not None and change.arguments.get("url") is None:
                await asyncio.shield(self.runtime.retire(started_url))
            raise
        finally:
            self.committing, self.in_progress = None, None
        retired = {before.stable.url} | ({before.canary.url} if before.canary else set())
        for url in retired - {after.stable.url} - ({after.canary.url} if after.canary else set()):
            self._later(drain_and_retire(self.runtime, self.current, url, self.settings.drain_s))
        return result

    def _tell_failure(self, change: Change, error: ControllerError) -> None:
        """Notify that a change failed (a deploy refused by its checks, say).

        Nothing changed, so the audit log has no record of it; whoever watches wants to know.
        """
        notifier = self.settings.notifier
        if notifier is not None and not isinstance(error, Superseded):
            notifier.publish({
                "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "action": f"{change.action}-failed", "reason": str(error),
                "change": change.number, "arguments": change.arguments,
            })  # fmt: skip

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
        change.settle(result, error)

    async def reconcile_aliases(self) -> None:
        """Point the aliases at the routing file's split (after a restart, say)."""
        await self.registry.set_aliases(aliases_of(await self.current()))

    def _later(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def close(self) -> None:
        """Stop the loop and finish background work (draining servers).

        Changes still pending stay recorded: the next controller makes them.
        """
        if self.loop is not None:
            self.loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.loop
        for change in self.desired.pending:
            change.settle(error=ControllerError(
                f"the controller is stopping: the {change.describe()} is kept and made when it"
                " starts again"
            ))  # fmt: skip
        await asyncio.gather(*self.background, return_exceptions=True)


class _Dropped(Exception):
    """The change was superseded while its server was starting."""


def _made(result: dict[str, Any] | None) -> dict[str, Any]:
    """Return the record a made change has (all but prediction buckets always have one)."""
    if result is None:
        raise ControllerError("the change had nothing to do")
    return result
