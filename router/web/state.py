"""The router app's state: what `create_app` opens and every handler reads, under one key each.

Kept apart from the app's assembly (`router.web.app`) so that handlers import the state, and the
assembly imports the handlers, never the other way round.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from common.settings import SystemSettings
from router.predictionlog.upload import SpoolUploader
from router.proxy.health import HealthBoard
from router.proxy.policy import ProxyPolicy
from router.proxy.shadow import Shadower
from router.routing.watcher import RoutingTable
from router.settings import RouterSettings
from router.telemetry.metrics import RouterMetrics

JSON = "application/json"


@dataclass
class Runtime:
    """What the router opens at start and closes at shutdown."""

    session: aiohttp.ClientSession | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


SETTINGS = web.AppKey("settings", RouterSettings)
SYSTEM = web.AppKey("system", SystemSettings)
TABLE = web.AppKey("table", RoutingTable)
METRICS = web.AppKey("metrics", RouterMetrics)
HEALTH = web.AppKey("health", HealthBoard)
RNG = web.AppKey("rng", random.Random)
POLICY = web.AppKey("policy", ProxyPolicy)
RUNTIME = web.AppKey("runtime", Runtime)
SHADOW = web.AppKey("shadow", Shadower)
UPLOADER: web.AppKey[SpoolUploader | None] = web.AppKey("uploader")
