"""Large bodies: relayed to the upstream as they arrive, and the answer relayed back in chunks.

A buffered request can be retried on stable whatever went wrong; a streamed one only when the
canary could not be reached at all, since nothing of the body has been consumed then.
"""

from __future__ import annotations

import time

import aiohttp
from aiohttp import web

from router.app import (
    HEALTH,
    METRICS,
    RNG,
    RUNTIME,
    SETTINGS,
    TABLE,
    error_response,
    invocations,
    record,
)
from router.choosing import choose_variant
from router.config import RoutingConfig, Variant
from router.proxy import HOP_BY_HOP, Failure, forward_headers

CHUNK_BYTES = 64 * 1024


async def invocations_entry(request: web.Request) -> web.StreamResponse:
    """Send large declared bodies down the streaming path, all others down the buffered one."""
    settings = request.app[SETTINGS]
    length = request.content_length
    if length is not None and length > settings.max_body_bytes:
        message = f"body of {length} bytes exceeds the limit of {settings.max_body_bytes}"
        return error_response(413, "REQUEST_LIMIT_EXCEEDED", message)
    if length is None or length <= settings.stream_above_bytes:
        return await invocations(request)
    return await relay(request)


async def relay(request: web.Request) -> web.StreamResponse:
    """Stream the body to the chosen variant (the canary failing over only if unreachable)."""
    app = request.app
    config = app[TABLE].current
    started = time.perf_counter()
    headers = forward_headers(request.headers)
    chosen = choose_variant(config, headers, app[RNG], app[HEALTH].available(config))
    attempts: list[Variant] = [chosen, "stable"] if chosen == "canary" else [chosen]
    failure = Failure("connect", "no attempt")
    for variant in attempts:
        if variant != chosen:
            app[METRICS].failovers.labels(chosen).inc()
        outcome = await _stream_once(request, config, variant)
        if isinstance(outcome, web.StreamResponse):
            return outcome
        failure = outcome
        if failure.reason != "connect":
            break
    answer = error_response(
        504 if failure.reason == "timeout" else 503,
        "DEADLINE_EXCEEDED" if failure.reason == "timeout" else "TEMPORARILY_UNAVAILABLE",
        f"the {variant} model server cannot take the request ({failure.reason})",
    )
    answer.headers["X-Model-Variant"] = variant
    answer.headers["X-Model-Version"] = config.upstream(variant).version
    record(app, variant, config.upstream(variant).version, answer.status, started)
    return answer


async def _stream_once(
    request: web.Request, config: RoutingConfig, variant: Variant
) -> web.StreamResponse | Failure:
    """Relay to one variant; return the client's (finished) response, or why it failed."""
    app = request.app
    upstream = config.upstream(variant)
    session = app[RUNTIME].session
    assert session is not None  # noqa: S101 (opened before the first request)
    health = app[HEALTH].of(upstream.url)
    started = time.perf_counter()
    response: web.StreamResponse | None = None
    try:
        async with session.post(
            upstream.url + request.path,
            data=request.content,
            headers=forward_headers(request.headers),
        ) as reply:
            response = web.StreamResponse(status=reply.status)
            for key, value in reply.headers.items():
                if key.lower() not in HOP_BY_HOP:
                    response.headers.add(key, value)
            response.headers["X-Model-Variant"] = variant
            response.headers["X-Model-Version"] = upstream.version
            if reply.content_length is not None:
                response.content_length = reply.content_length
            await response.prepare(request)
            async for chunk in reply.content.iter_chunked(CHUNK_BYTES):
                await response.write(chunk)
            await response.write_eof()
    except aiohttp.ClientConnectorError as error:
        failure = Failure("connect", str(error))
    except TimeoutError as error:
        failure = Failure("timeout", type(error).__name__)
    except (
        aiohttp.ServerDisconnectedError,
        aiohttp.ClientOSError,
        aiohttp.ClientPayloadError,
    ) as error:
        failure = Failure("reset", str(error) or type(error).__name__)
    else:
        if response.status >= 500:
            health.failed(f"answered {response.status}", app[SETTINGS])
        else:
            health.succeeded()
        record(app, variant, upstream.version, response.status, started)
        return response
    app[METRICS].upstream_errors.labels(variant, failure.reason).inc()
    health.failed(failure.reason, app[SETTINGS])
    if response is not None and response.prepared:
        raise ConnectionResetError(f"{variant} failed mid-answer: {failure.detail}")
    return failure
