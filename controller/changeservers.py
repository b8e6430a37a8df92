"""The model servers a change brings up, and the ones it leaves without traffic.

A deploy's server is started (or adopted, when the operator gave its URL) and checked against
stable before the change is committed; a server the controller started is stopped again when
the deploy fails or is superseded, and a server a committed change took out of the split is
stopped once the requests in flight to it had time to finish. A server the operator gave is
never stopped: the controller did not start it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp

from contracts.routing import RoutingConfig
from controller.checks import check_server, stable_inputs
from controller.runtime import Runtime


async def prepare_server(
    runtime: Runtime,
    session: aiohttp.ClientSession,
    current: Callable[[], Awaitable[RoutingConfig]],
    version: str,
    given_url: str | None,
) -> str:
    """Start (or adopt) `version`'s server and check it against stable's; return its URL."""
    split = await current()
    inputs = await stable_inputs(session, split)
    url = await runtime.provide(version, given_url)
    try:
        await check_server(session, url, split.model, version, inputs)
    except BaseException:
        if given_url is None:
            await asyncio.shield(runtime.retire(url))
        raise
    return url


async def stop_when_started(
    runtime: Runtime, starting: asyncio.Task[str], given_url: str | None
) -> None:
    """Wait for a superseded deploy's start to end; stop the server if it came up."""
    await asyncio.wait({starting})
    if starting.cancelled() or starting.exception() is not None:
        return  # cancelled while starting: `provide` or `prepare_server` stopped it
    if given_url is None:
        await runtime.retire(starting.result())


async def drain_and_retire(
    runtime: Runtime, current: Callable[[], Awaitable[RoutingConfig]], url: str, drain_s: float
) -> None:
    """Give requests in flight time to finish, then stop the server if nothing uses it."""
    await asyncio.sleep(drain_s)
    config = await current()
    in_use = {config.stable.url} | ({config.canary.url} if config.canary else set())
    if url not in in_use:
        await runtime.retire(url)
