"""The routers the controller knows: who confirms each change, and whose metrics are read.

Routers are listed (`--router URL`, repeatable) or, on Kubernetes, found afresh each time from
a Service's Endpoints (`--router-endpoints SERVICE`): every ready router pod confirms a change,
and every pod's metrics are read, pod by pod, not whichever one the Service picks.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from controller.errors import ControllerError
from controller.kube import KubeApi

POLL_SECONDS = 0.05


class RouterDirectory(Protocol):
    """Where the routers are now."""

    async def urls(self) -> list[str]:
        """Return the base URL of every router; ControllerError if they cannot be found."""
        ...


@dataclass(frozen=True)
class RouterList:
    """Routers named on the command line."""

    listed: tuple[str, ...] = ()

    async def urls(self) -> list[str]:
        """Return the routers as listed."""
        return list(self.listed)


class EndpointRouters:
    """The ready pods behind a Kubernetes Service, read from its Endpoints at each use."""

    def __init__(self, service: str, namespace: str | None = None, port: str | None = None):
        self.kube = KubeApi(namespace)
        self.service, self.port = service, port
        """`port`: the Service port's name to use (default: its first port)."""

    async def urls(self) -> list[str]:
        """Return `http://ip:port` of every ready address of the Service's Endpoints."""
        what = f"endpoints {self.kube.namespace}/{self.service}"
        found = await self.kube.call(
            what, self.kube.core.read_namespaced_endpoints, self.service, self.kube.namespace
        )
        urls = []
        for subset in found.subsets or []:
            port = _port_of(subset.ports or [], self.port)
            if port is None:
                continue
            for address in subset.addresses or []:  # not_ready_addresses take no traffic
                host = f"[{address.ip}]" if ":" in address.ip else address.ip
                urls.append(f"http://{host}:{port}")
        return sorted(urls)


def _port_of(ports: list[Any], name: str | None) -> int | None:
    for port in ports:
        if name is None or port.name == name:
            return int(port.port)
    return None


async def reported_version(session: aiohttp.ClientSession, router: str) -> str | None:
    """Return the routing-file version a router's /health reports, or None if it cannot say."""
    try:
        timeout = aiohttp.ClientTimeout(total=1.0)
        async with session.get(f"{router}/health", timeout=timeout) as answer:
            body = await answer.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    version = body.get("config_version") if isinstance(body, dict) else None
    return version if isinstance(version, str) else None


async def wait_for_routers(
    session: aiohttp.ClientSession, routers: list[str], version: str, within: float
) -> None:
    """Return once every router reports `version`; raise ControllerError naming the laggards."""
    deadline = time.monotonic() + within
    waiting = list(routers)
    while waiting:
        seen = await asyncio.gather(*(reported_version(session, r) for r in waiting))
        waiting = [router for router, got in zip(waiting, seen, strict=True) if got != version]
        if not waiting:
            return
        if time.monotonic() >= deadline:
            raise ControllerError(
                f"router(s) {', '.join(waiting)} did not load routing file version {version} "
                f"within {within:g} s"
            )
        await asyncio.sleep(POLL_SECONDS)
