"""The router's public front in-process, on a free loopback port, for tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from router.dataplane import Front
from router.serve import running_router


@asynccontextmanager
async def running_front(app: web.Application, *, fast_path: bool) -> AsyncIterator[Front]:
    """Run `app` behind the front on a free loopback port, as `mlcanary router` does."""
    async with running_router(app, "127.0.0.1", 0, fast_path=fast_path) as front:
        yield front
