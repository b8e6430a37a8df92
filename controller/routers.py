"""Confirming a change: wait until every known router reports the new routing file's version."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from controller.errors import ControllerError

POLL_SECONDS = 0.05


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
