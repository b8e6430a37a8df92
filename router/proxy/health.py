"""Upstream health: passive ejection after consecutive failures, and active /ping checks."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from contracts.payloads import ModelMetadata
from contracts.routing import RoutingConfig, Variant
from router.settings import RouterSettings

log = logging.getLogger("router")


@dataclass
class UpstreamHealth:
    """What the router knows of one upstream URL."""

    url: str
    failures: int = 0
    """Consecutive failed exchanges (passive)."""
    ejections_in_row: int = 0
    ejected_until: float = 0.0
    ping_ok: bool = True
    """The last active /ping answered 200."""
    last_error: str | None = None

    def available(self, now: float) -> bool:
        """Tell whether the upstream may take traffic now."""
        return self.ping_ok and now >= self.ejected_until

    def succeeded(self) -> None:
        """Record a good exchange: the failure streak ends."""
        self.failures = 0
        if self.ejections_in_row and time.monotonic() >= self.ejected_until:
            self.ejections_in_row = 0

    def failed(self, reason: str, settings: RouterSettings) -> None:
        """Record a failed exchange; eject after too many in a row, doubling each time.

        An ejection is logged, as nginx logs an upstream it disables: it changes where traffic
        goes.
        """
        self.failures += 1
        self.last_error = reason
        if self.failures >= settings.eject_after_failures:
            seconds = min(settings.eject_base_s * 2**self.ejections_in_row, settings.eject_max_s)
            self.ejected_until = time.monotonic() + seconds
            self.ejections_in_row += 1
            log.warning(
                "%s ejected for %g s after %d failures in a row (last: %s)",
                self.url, seconds, self.failures, reason,
            )  # fmt: skip
            self.failures = 0


@dataclass(frozen=True, slots=True)
class VariantHealth:
    """Whether each variant of one config may take traffic, read when asked."""

    config: RoutingConfig
    stable: UpstreamHealth
    canary: UpstreamHealth | None

    def of(self, variant: Variant) -> UpstreamHealth:
        """Return the health record of `variant`'s upstream (which the config must have)."""
        record = self._record(variant)
        if record is None:
            raise ValueError(f"the routing config has no {variant}")
        return record

    def get(self, variant: Variant, default: bool = True) -> bool:
        """Tell whether `variant` may take traffic now (`default` if the config has none)."""
        record = self._record(variant)
        return default if record is None else record.available(time.monotonic())

    def _record(self, variant: Variant) -> UpstreamHealth | None:
        return self.stable if variant == "stable" else self.canary


@dataclass
class HealthBoard:
    """Health by upstream URL, so a reload that keeps a URL keeps its history."""

    settings: RouterSettings
    by_url: dict[str, UpstreamHealth] = field(default_factory=dict)
    metadata: dict[str, ModelMetadata] = field(default_factory=dict)
    """Each upstream's /metadata (native model servers), fetched once it answers /ping."""
    _last: VariantHealth | None = None

    def of(self, url: str) -> UpstreamHealth:
        """Return (creating) the health record of `url`."""
        health = self.by_url.get(url)
        if health is None:
            health = self.by_url[url] = UpstreamHealth(url)
        return health

    def of_config(self, config: RoutingConfig) -> VariantHealth:
        """Return the health of `config`'s variants, asked one at a time.

        The hot path asks for the chosen variant's only. Kept for the last config: it changes
        only on a reload.
        """
        if self._last is None or self._last.config is not config:
            canary = self.of(config.canary.url) if config.canary is not None else None
            self._last = VariantHealth(config, self.of(config.stable.url), canary)
        return self._last

    def available(self, config: RoutingConfig) -> dict[Variant, bool]:
        """Tell whether each variant of `config` may take traffic now.

        For /health and the gauges; the hot path asks `of_config` for the chosen variant only.
        """
        variants = self.of_config(config)
        result: dict[Variant, bool] = {"stable": variants.get("stable")}
        if config.canary is not None:
            result["canary"] = variants.get("canary")
        return result

    async def ping(self, session: aiohttp.ClientSession, url: str) -> None:
        """Check one upstream's /ping and record the outcome; learn its /metadata once."""
        health = self.of(url)
        was_ok = health.ping_ok
        timeout = aiohttp.ClientTimeout(total=self.settings.health_interval_s)
        try:
            async with session.get(f"{url}/ping", timeout=timeout) as answer:
                await answer.read()
                health.ping_ok = answer.status == 200
                health.last_error = None if health.ping_ok else f"/ping answered {answer.status}"
        except (aiohttp.ClientError, TimeoutError) as error:
            health.ping_ok = False
            health.last_error = f"/ping failed: {type(error).__name__}"
        if health.ping_ok != was_ok:
            if health.ping_ok:
                log.warning("%s answers /ping again: it takes traffic", url)
            else:
                log.warning("%s takes no traffic: %s", url, health.last_error)
        if health.ping_ok and url not in self.metadata:
            await self._learn_metadata(session, url, timeout)

    async def _learn_metadata(
        self, session: aiohttp.ClientSession, url: str, limits: aiohttp.ClientTimeout
    ) -> None:
        """Keep a native model server's /metadata (its load time, for model info answers)."""
        try:
            async with session.get(f"{url}/metadata", timeout=limits) as answer:
                if answer.status == 200:
                    self.metadata[url] = ModelMetadata.model_validate_json(await answer.read())
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return  # not a native model server, or not now: model info goes without load time

    async def run(
        self,
        session: aiohttp.ClientSession,
        config_of: Callable[[], RoutingConfig],
        observe: Callable[[dict[Variant, bool]], None],
    ) -> None:
        """Ping every upstream of the current config every interval (cancel to stop)."""
        while True:
            config = config_of()
            urls = [config.stable.url] + ([config.canary.url] if config.canary else [])
            await asyncio.gather(*(self.ping(session, url) for url in urls))
            observe(self.available(config))
            await asyncio.sleep(self.settings.health_interval_s)
