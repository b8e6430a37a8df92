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

from contracts.payloads import RouterHealth
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


@dataclass(frozen=True)
class Report:
    """What one router process's /health says of the routing file it follows."""

    version: str | None
    instance: str
    """The process's instance id (the router's address for a release that names none)."""
    processes: int
    """How many processes share the router's address (`--workers`), each to confirm."""


async def reported(session: aiohttp.ClientSession, router: str) -> Report:
    """Ask one of the router's processes what it follows.

    A new connection each time: `--workers` processes share the address, and the kernel
    spreads connections over them.
    """
    try:
        timeout = aiohttp.ClientTimeout(total=1.0)
        async with session.get(
            f"{router}/health", timeout=timeout, headers={"Connection": "close"}
        ) as answer:
            health = RouterHealth.model_validate_json(await answer.read())
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return Report(None, router, 1)
    return Report(health.config_version, health.instance_id, max(1, health.processes))


async def reported_version(session: aiohttp.ClientSession, router: str) -> str | None:
    """Return the routing-file version a router's /health reports, or None if it cannot say."""
    return (await reported(session, router)).version


async def wait_for_routers(
    session: aiohttp.ClientSession, routers: list[str], version: str, within: float
) -> None:
    """Return once every process of every router reports `version`.

    Raise ControllerError naming the laggards (and how many of a router's processes confirmed)
    if `within` seconds pass first.
    """
    deadline = time.monotonic() + within
    confirmed: dict[str, set[str]] = {router: set() for router in routers}
    needed = dict.fromkeys(routers, 1)
    answered: set[str] = set()
    while waiting := [r for r in routers if len(confirmed[r]) < needed[r]]:
        for router, report in zip(
            waiting, await asyncio.gather(*(reported(session, r) for r in waiting)), strict=True
        ):
            if report.version is None:
                continue  # no answer: says nothing of how many processes there are
            answered.add(router)
            needed[router] = report.processes
            if report.version == version:
                confirmed[router].add(report.instance)
        if all(len(confirmed[r]) >= needed[r] for r in waiting):
            return
        if time.monotonic() >= deadline:
            laggards = [
                f"{router} (no answer)" if router not in answered
                else router if needed[router] == 1
                else f"{router} ({len(confirmed[router])} of its {needed[router]} processes)"
                for router in waiting if len(confirmed[router]) < needed[router]
            ]  # fmt: skip
            raise ControllerError(
                f"router(s) {', '.join(laggards)} did not load routing file version {version} "
                f"within {within:g} s"
            )
        await asyncio.sleep(POLL_SECONDS)
