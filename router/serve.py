"""Run one router process until SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio
import signal

from aiohttp import web

from router.app import create_app
from router.settings import RouterSettings


async def serve_router(settings: RouterSettings) -> None:
    """Listen, follow the routing file, and finish requests in flight on the way out."""
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=settings.total_timeout_s)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
    await site.start()
    host, port = runner.addresses[0][:2]
    print(f"router listening on http://{host}:{port}, following {settings.config_path}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
