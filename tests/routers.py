"""The router's public front in-process, on a free loopback port, for tests."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from aiohttp import web

from router.plane.dataplane import Front
from router.serve import running_router


@asynccontextmanager
async def running_front(app: web.Application, *, fast_path: bool) -> AsyncIterator[Front]:
    """Run `app` behind the front on a free loopback port, as `mlcanary router` does."""
    async with running_router(app, "127.0.0.1", 0, fast_path=fast_path) as front:
        yield front


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], what: str, within: float = 30
) -> None:
    """Poll `condition` (plain or async) until it holds; fail naming `what` if it does not
    `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within

    async def holds() -> bool:
        result = condition()
        return await result if inspect.isawaitable(result) else result

    while not await holds():
        if loop.time() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.01)
