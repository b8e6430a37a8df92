"""Run one router process until SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from common.supervision import stop_requested
from router.plane.dataplane import DataPlane, Front, start_front
from router.settings import RouterSettings
from router.telemetry.metrics import new_instance_id
from router.web.app import create_app
from router.workers import Workers

log = logging.getLogger("router")


def run_router(
    settings: RouterSettings,
    *,
    workers: int = 1,
    loop: str = "asyncio",
    reuse_port: bool = False,
    data_plane: str = "raw",
) -> None:
    """Serve with `workers` processes sharing the port (SO_REUSEPORT) on the chosen loop.

    This process is the first of them and keeps the others running (`router.workers`); their
    metric values meet in a private folder of its making, removed when it stops.
    """
    if workers <= 1:
        _run(serve_router(settings, reuse_port=reuse_port, data_plane=data_plane), loop)
        return
    shared = Path(tempfile.mkdtemp(prefix="mlcanary-router-metrics-"))
    settings = settings.model_copy(
        update={"processes": workers, "shared_metrics": shared, "instance_id": new_instance_id()}
    )
    argv = [
        sys.executable, "-m", "mlcanary", "router", "--settings-json", settings.model_dump_json(),
        "--loop", loop, "--data-plane", data_plane, "--reuse-port",
    ]  # fmt: skip
    others = Workers(argv, workers - 1)
    others.start()
    try:
        _run(serve_router(settings, reuse_port=True, data_plane=data_plane, others=others), loop)
    finally:
        others.stop(grace=settings.drain_timeout_s + 10)
        shutil.rmtree(shared, ignore_errors=True)


def _run(main: Coroutine[Any, Any, None], loop: str) -> None:
    if loop == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


@asynccontextmanager
async def running_router(
    app: web.Application,
    host: str,
    port: int,
    *,
    fast_path: bool = True,
    reuse_port: bool = False,
    drain_timeout: float = 0,
) -> AsyncIterator[Front]:
    """Serve `app` behind the public front on `host:port`; drain and stop both on exit.

    The aiohttp app listens on a free loopback port behind the front (see `router.plane.dataplane`),
    and stays up until the front has answered every request it received.
    """
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=drain_timeout)
    await runner.setup()
    # The front relays to it over up to `upstream_connections` sockets, opened in bursts.
    site = web.TCPSite(runner, "127.0.0.1", 0, reuse_address=True, backlog=1024)
    await site.start()
    app_host, app_port = runner.addresses[0][:2]
    plane = DataPlane(app, f"http://{app_host}:{app_port}", fast_path=fast_path)
    try:
        front = await start_front(plane, host, port, reuse_port=reuse_port)
        try:
            yield front
        finally:
            aborted = await front.shutdown(drain_timeout)
            if aborted:
                log.warning("drain timeout: %d connections closed with answers owed", aborted)
    finally:
        await runner.cleanup()


async def serve_router(
    settings: RouterSettings,
    *,
    reuse_port: bool = False,
    data_plane: str = "raw",
    others: Workers | None = None,
) -> None:
    """Listen, follow the routing file; on SIGTERM or SIGINT drain, then exit.

    The first process of a router with `--workers` keeps the `others` running meanwhile.
    """
    app = create_app(settings)
    async with running_router(
        app,
        settings.host,
        settings.port,
        fast_path=data_plane == "raw",
        reuse_port=reuse_port,
        drain_timeout=settings.drain_timeout_s,
    ) as front:
        gc.collect()
        gc.freeze()  # what start-up built stays: later collections need not walk it
        listening = f"http://{settings.host}:{front.port}"
        process = f" (pid {os.getpid()})" if settings.processes > 1 else ""
        print(
            f"router listening on {listening}{process}, following {settings.config_path}",
            flush=True,
        )
        stop = stop_requested()
        keeping = asyncio.create_task(others.keep_running()) if others else None
        await stop.wait()
        if keeping is not None:
            keeping.cancel()
        log.info("draining: answering requests received (up to %s s)", settings.drain_timeout_s)
