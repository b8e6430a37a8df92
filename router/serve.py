"""Run one router process until SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio
import gc
import signal
import subprocess
import sys
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from router.app import create_app
from router.dataplane import DataPlane, start_front
from router.settings import RouterSettings


def run_router(
    settings: RouterSettings,
    *,
    workers: int = 1,
    loop: str = "asyncio",
    reuse_port: bool = False,
    data_plane: str = "raw",
) -> None:
    """Serve with `workers` processes sharing the port (SO_REUSEPORT) on the chosen loop."""
    if workers <= 1:
        _run(serve_router(settings, reuse_port=reuse_port, data_plane=data_plane), loop)
        return
    argv = [
        sys.executable, "-m", "mlcanary", "router", "--config", str(settings.config_path),
        "--host", settings.host, "--port", str(settings.port), "--loop", loop,
        "--data-plane", data_plane, "--reuse-port",
        "--timeout", str(settings.total_timeout_s),
        "--max-body-mb", str(settings.max_body_bytes / 1024 / 1024),
    ]  # fmt: skip
    if settings.controller_url:
        argv += ["--controller", settings.controller_url]
    children = [
        subprocess.Popen(argv)  # noqa: S603 (our own command, no shell)
        for _ in range(workers - 1)
    ]
    try:
        _run(serve_router(settings, reuse_port=True, data_plane=data_plane), loop)
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


async def serve_router(
    settings: RouterSettings, *, reuse_port: bool = False, data_plane: str = "raw"
) -> None:
    """Listen, follow the routing file, and finish requests in flight on the way out.

    With the raw data plane the aiohttp app listens on a free loopback port behind it.
    """
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=settings.total_timeout_s)
    await runner.setup()
    raw = data_plane == "raw"
    site = web.TCPSite(
        runner,
        "127.0.0.1" if raw else settings.host,
        0 if raw else settings.port,
        reuse_address=True,
        reuse_port=(reuse_port and not raw) or None,
    )
    await site.start()
    host, port = runner.addresses[0][:2]
    front = None
    if raw:
        plane = DataPlane(app, f"http://{host}:{port}")
        front = await start_front(plane, settings.host, settings.port, reuse_port=reuse_port)
        host, port = front.sockets[0].getsockname()[:2]
    gc.collect()
    gc.freeze()  # what start-up built stays: later collections need not walk it
    print(f"router listening on http://{host}:{port}, following {settings.config_path}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if front is not None:
        front.close()
        await front.wait_closed()
        plane.pools.close()
    await runner.cleanup()
