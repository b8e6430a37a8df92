"""Run the controller: settle the split (start or adopt its servers), then serve the admin API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from common.settings import RegistrySettings, system_settings
from common.supervision import stop_requested
from contracts.routing import MODEL_SERVER_PROTOCOLS, RoutingConfig, RoutingFileError, Variant
from controller.answers import DEFAULT_LIMIT
from controller.api import LIVE, Tokens, create_api
from controller.changes import Controller
from controller.checks import check_server, server_metadata, stable_inputs, v2_metadata
from controller.commit import ChangeSettings
from controller.errors import ControllerError
from controller.feedback import LabelBook
from controller.hosts import host_names
from controller.notifications import NotificationMetrics, Notifier, Sink
from controller.registry import Registry
from controller.rollout.engine import RolloutRunner
from controller.rollout.metrics import RolloutMetrics
from controller.rollout.state import ACTIVE
from controller.routers import EndpointRouters, RouterList
from controller.runtime import Runtime
from controller.stores import ConfigMapStore, FileStore, RoutingStore
from controller.token import LABELS_TOKEN_FILE, stored_token
from training.registry import CHALLENGER, CHAMPION

log = logging.getLogger("controller")


@dataclass
class SplitInUse:
    """The model servers the routing file's split uses, as last read.

    A file that cannot be read or is invalid (a bad hand edit) is not the split changing: the
    last good split's servers are kept and supervised, as the router keeps serving the last
    good version, and the problem is logged once. (The soak found that such an edit crashed
    the controller, whose exit stopped every model server.)
    """

    urls: set[str]
    problem: str = ""

    async def read(self, controller: Controller) -> set[str]:
        """Return the servers in use now, or those of the last split read."""
        try:
            config = await controller.current()
        except (RoutingFileError, ControllerError) as error:
            if str(error) != self.problem:
                log.error("the routing file cannot be read; its last split is kept: %s", error)
                self.problem = str(error)
            return self.urls
        if self.problem:
            log.info("the routing file is readable again")
            self.problem = ""
        self.urls = {config.stable.url} | ({config.canary.url} if config.canary else set())
        return self.urls


@dataclass(frozen=True)
class ControllerOptions:
    """How the controller runs and where it keeps things."""

    routing_path: Path
    state: Path
    host: str = "127.0.0.1"
    port: int = 8001
    routers: list[str] = field(default_factory=list)
    router_endpoints: str | None = None
    """Find the routers as the ready pods of this Kubernetes Service, instead of `routers`."""
    runtime: str = "local"
    stable_version: str = "latest"
    """For a new routing file: a number, or `latest` (the champion, else the newest version)."""
    canary_version: str | None = None
    """For a new routing file: a number, `challenger`, or none."""
    canary_weight: float = 10.0
    log_percent: float = 100.0
    """For a new routing file: the share of answers recorded in the prediction log."""
    stable_url: str | None = None
    """For a new routing file: adopt this server for stable instead of starting one."""
    canary_url: str | None = None
    """For a new routing file: adopt this server for the canary instead of starting one."""
    configmap: str | None = None
    """Keep the routing file in this Kubernetes ConfigMap instead of `routing_path`."""
    namespace: str | None = None
    """The ConfigMap's and the router Service's namespace (default: the pod's own, else
    `default`)."""
    confirm_timeout_s: float = 5.0
    allowed_hosts: tuple[str, ...] = ()
    """Names the admin API answers to besides loopback's and the address it binds."""
    notify: tuple[str, ...] = ()
    """Where every change and rollout event is sent (webhook or slack+https URLs)."""
    notify_secret: bytes | None = None
    """The key webhook notifications are signed with (HMAC-SHA256), if any."""
    max_logged_answers: int = DEFAULT_LIMIT
    """Logged answers held to join labels with (see `controller.answers`)."""
    label_retention_days: float | None = 90.0
    """Labels older than this are dropped from the labels file at start."""
    prediction_log: str | None = None
    """The routers' prediction log, which labels are joined with (default: the state
    folder's `predictions`)."""

    @property
    def token_path(self) -> Path:
        """Where the admin token is kept."""
        return self.state / "admin-token"


async def resolve_version(registry: Registry, wanted: str, alias: str) -> str | None:
    """Turn `latest` / an alias name / a number into a registered version number."""
    versions = await registry.versions()
    if wanted.isdigit():
        if not any(item["version"] == wanted for item in versions):
            raise ControllerError(f"the registry has no version {wanted}")
        return wanted
    tagged = [item["version"] for item in versions if alias in item["aliases"]]
    if tagged:
        return str(tagged[0])
    if wanted == "latest" and versions:
        return str(versions[-1]["version"])
    return None


BUCKETS_CHECK_S = 5.0
"""How often the controller checks that the routers count predictions in buckets."""


async def keep_buckets(controller: Controller, rollout: RolloutRunner) -> None:
    """Have prediction buckets cut for the page's plot, unless a rollout is running.

    The controller's own loop does it, not the page's reads: an anonymous read never writes.
    A rollout cuts them itself between windows; a cut within one of its windows would change
    what the window counts.
    """
    if rollout.state is not None and rollout.state.status in ACTIVE:
        return
    try:
        await controller.ensure_prediction_buckets()
    except Exception:  # the loop supervises model servers too: it must outlive any failure here
        log.exception("prediction buckets not checked")


async def settle_split(
    controller: Controller, options: ControllerOptions, session: aiohttp.ClientSession
) -> RoutingConfig:
    """Create the routing file, or adopt its servers (starting those that are gone); write it."""
    runtime, registry, store = controller.runtime, controller.registry, controller.settings.store
    if not await store.exists():
        stable = await resolve_version(registry, options.stable_version, CHAMPION)
        if stable is None:
            raise ControllerError(f"the registry has no {registry.settings.model_name} to serve")
        canary = None
        if options.canary_version is not None:
            canary = await resolve_version(registry, options.canary_version, CHALLENGER)
        stable_url = await runtime.provide(stable, options.stable_url)
        document: dict[str, object] = {
            "model": registry.settings.model_name,
            "stable": own_server(stable_url, stable),
            "log": {"percent": options.log_percent},
        }
        if canary is not None and canary != stable:
            canary_url = await runtime.provide(canary, options.canary_url)
            document["canary"] = {
                **own_server(canary_url, canary),
                "weight": options.canary_weight,
            }
        config = RoutingConfig.model_validate(document)
    else:
        config = (await store.load())[0]
        document = config.model_dump(mode="json", exclude_none=True)
        document["stable"] = await _adopt_or_start(controller, session, config, "stable")
        if config.canary is not None:
            adopted = await _adopt_or_start(controller, session, config, "canary")
            document["canary"] = {**adopted, "weight": config.canary.weight}
        config = RoutingConfig.model_validate(document)
    inputs = await stable_inputs(session, config)
    if config.canary is not None:
        await check_server(session, config.canary.url, config.model, config.canary.version, inputs)
    await store.save(config)
    return config


def own_server(url: str, version: str) -> dict[str, Any]:
    """Return the routing entry of one of our model servers (both protocols, our V2 name)."""
    return {"url": url, "version": version, "protocols": list(MODEL_SERVER_PROTOCOLS)}


async def _adopt_or_start(
    controller: Controller, session: aiohttp.ClientSession, config: RoutingConfig, variant: Variant
) -> dict[str, Any]:
    """Keep a variant's server if it serves its version; else start one (local runtime).

    Return the variant's routing entry (its weight aside). A server of another kind that speaks
    the Open Inference Protocol (MLServer, KServe, Triton: `/metadata` is not theirs) is kept
    while its V2 metadata answers for the model and does not name other versions only.
    """
    upstream = config.upstream(variant)
    url, version = upstream.url, upstream.version
    kept = upstream.model_dump(mode="json", exclude_none=True, exclude={"weight"})
    try:
        metadata = await server_metadata(session, url)
        if metadata.version == version:
            return kept
    except ControllerError:
        if "v2" in upstream.protocols:
            try:
                versions = (await v2_metadata(session, upstream, config.model)).get("versions")
            except ControllerError:
                versions = None
            if isinstance(versions, list) and (not versions or version in versions):
                return kept
    if controller.runtime.kind != "local":
        raise ControllerError(f"{url} does not serve version {version} (static runtime)")
    log.info("starting a model server for version %s (%s is not serving it)", version, url)
    return own_server(await controller.runtime.provide(version, None), version)


async def serve_controller(options: ControllerOptions, registry_settings: RegistrySettings) -> None:
    """Settle the split, serve the admin API until SIGTERM/Ctrl-C, then stop owned servers."""
    session = aiohttp.ClientSession()
    runtime = Runtime(options.runtime, registry_settings, options.state)
    store: RoutingStore = (
        ConfigMapStore(options.configmap, options.namespace)
        if options.configmap
        else FileStore(options.routing_path)
    )
    registry = CollectorRegistry()
    notifier = Notifier(
        tuple(Sink.parse(url) for url in options.notify), options.notify_secret, session,
        NotificationMetrics.create(registry), registry_settings.model_name,
        page_url=f"http://{options.host}:{options.port}/",
    )  # fmt: skip
    changes = ChangeSettings(
        store=store,
        audit_path=options.state / "audit.jsonl",
        notifier=notifier,
        routers=(
            EndpointRouters(options.router_endpoints, options.namespace)
            if options.router_endpoints
            else RouterList(tuple(options.routers))
        ),
        confirm_timeout_s=options.confirm_timeout_s,
    )
    controller = Controller(changes, runtime, Registry(registry_settings), session)
    runner: web.AppRunner | None = None
    rollout: RolloutRunner | None = None
    try:
        if await store.exists():
            config = (await store.load())[0]
            runtime.recover({config.stable.url} | ({config.canary.url} if config.canary else set()))
        await settle_split(controller, options, session)
        try:
            await controller.reconcile_aliases()
        except ControllerError as error:
            log.warning("aliases not moved: %s", error)
        settings = system_settings()
        tokens = Tokens(
            admin=stored_token(settings.admin_token, options.token_path),
            labels=stored_token(settings.labels_token, options.state / LABELS_TOKEN_FILE),
        )
        labels = await asyncio.to_thread(
            LabelBook, options.prediction_log or options.state / "predictions",
            options.state / "labels.jsonl", registry, options.max_logged_answers,
            options.label_retention_days,
        )  # fmt: skip
        rollout = RolloutRunner(
            controller, session, options.state / "rollout.json", RolloutMetrics.create(registry),
            labels,
        )  # fmt: skip
        controller.start()
        await rollout.resume_saved()
        names = host_names(options.host, options.allowed_hosts)
        api = create_api(controller, tokens, rollout, registry, labels, names)
        runner = web.AppRunner(api, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, options.host, options.port, reuse_address=True)
        await site.start()
        print(f"controller listening on http://{options.host}:{options.port}", flush=True)
        stop = stop_requested()
        split = SplitInUse(set(runtime.servers))
        buckets_checked = 0.0
        while not stop.is_set():
            if time.monotonic() - buckets_checked >= BUCKETS_CHECK_S:
                await keep_buckets(controller, rollout)
                buckets_checked = time.monotonic()
            if rollout.active():  # its history sampled for the page, watched or not
                api[LIVE].keep_up()
            if runtime.servers:  # owned servers only: no store read each second otherwise
                runtime.supervise(await split.read(controller))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        if rollout is not None:
            await rollout.close()
        if runner is not None:
            await runner.cleanup()
        await controller.close()
        await notifier.close()
        await runtime.stop_all()
        await session.close()
