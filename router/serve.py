"""Run one router process until SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from router.app import create_app
from router.settings import RouterSettings


def run_router(
    settings: RouterSettings, *, workers: int = 1, loop: str = "asyncio", reuse_port: bool = False
) -> None:
    """Serve with `workers` processes sharing the port (SO_REUSEPORT) on the chosen loop."""
    if workers <= 1:
        _run(serve_router(settings, reuse_port=reuse_port), loop)
        return
    children = [
        subprocess.Popen(  # noqa: S603 (our own command, no shell)
            [
                sys.executable, "-m", "mlcanary", "router", "--config", str(settings.config_path),
                "--host", settings.host, "--port", str(settings.port), "--loop", loop,
                "--reuse-port",
            ]
        )
        for _ in range(workers - 1)
    ]  # fmt: skip
    try:
        _run(serve_router(settings, reuse_port=True), loop)
    finally:
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            child.wait(timeout=settings.total_timeout_s + 5)


def _run(main: Coroutine[Any, Any, None], loop: str) -> None:
    if loop == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


async def serve_router(settings: RouterSettings, *, reuse_port: bool = False) -> None:
    """Listen, follow the routing file, and finish requests in flight on the way out."""
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=settings.total_timeout_s)
    await runner.setup()
    site = web.TCPSite(
        runner, settings.host, settings.port, reuse_address=True, reuse_port=reuse_port or None
    )
    await site.start()
    host, port = runner.addresses[0][:2]
    print(f"router listening on http://{host}:{port}, following {settings.config_path}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
