"""Large bodies: relayed to the upstream as they arrive, and the answer relayed back in chunks.

The proxy policy is the buffered path's; only its `replayable` differs: a streamed body is gone
once sent, so the canary fails over to stable only when it could not be reached at all.
"""

from __future__ import annotations

import time

from aiohttp import web

from contracts.errors import error_body, error_response
from contracts.routing import Protocol, RoutingConfig, Variant
from contracts.v2 import v2_error
from router.proxy.exchange import FAILURES, decoded, failure_of, forward_headers
from router.proxy.policy import Failure, end_to_end, failure_answer
from router.routing.protocols import unspoken, upstream_path
from router.web.scoring import score, tag
from router.web.state import JSON, POLICY, RUNTIME, SETTINGS, TABLE

CHUNK_BYTES = 64 * 1024


async def invocations_entry(request: web.Request) -> web.StreamResponse:
    """`POST /invocations`: MLflow's scoring request, on the routing table of now."""
    config = request.app[TABLE].current
    why = unspoken(config, "mlflow")
    if why is not None:
        return error_response(404, "ENDPOINT_NOT_FOUND", why)
    return await scoring_entry(request, config, "mlflow")


async def scoring_entry(
    request: web.Request, config: RoutingConfig, protocol: Protocol
) -> web.StreamResponse:
    """Send large declared bodies down the streaming path, all others down the buffered one."""
    settings = request.app[SETTINGS]
    length = request.content_length
    if length is not None and length > settings.max_body_bytes:
        message = f"body of {length} bytes exceeds the limit of {settings.max_body_bytes}"
        body = (
            v2_error(message) if protocol == "v2" else error_body("REQUEST_LIMIT_EXCEEDED", message)
        )
        return web.Response(status=413, body=body, headers={"Content-Type": JSON})
    if length is None or length <= settings.stream_above_bytes:
        return await score(request, config, protocol)
    return await relay(request, config, protocol)


async def relay(
    request: web.Request, config: RoutingConfig, protocol: Protocol
) -> web.StreamResponse:
    """Stream the body to the chosen variant, settled by the proxy policy."""
    app = request.app
    policy = app[POLICY]
    started = time.perf_counter()
    variant, forced = policy.choose(config, request.headers)
    first_try = True
    while True:
        outcome, response = await _stream_once(request, config, variant, protocol)
        retry = policy.settle(config, variant, outcome, first_try=first_try, replayable=False)
        if retry is None or response is not None:
            break
        variant, first_try = retry, False
    version = config.upstream(variant).version
    if response is not None:
        if isinstance(outcome, Failure):
            raise ConnectionResetError(f"{variant} failed mid-answer: {outcome.detail}")
        policy.answered(variant, version, response.status, started, None, forced=forced)
        return response
    assert isinstance(outcome, Failure)  # noqa: S101 (no response means no answer came)
    status, error = failure_answer(variant, outcome, protocol)
    answer = web.Response(status=status, body=error, content_type="application/json")
    tag(answer, config, variant)
    policy.answered(variant, version, status, started, None, forced=forced)
    return answer


async def _stream_once(
    request: web.Request, config: RoutingConfig, variant: Variant, protocol: Protocol
) -> tuple[int | Failure, web.StreamResponse | None]:
    """Relay to one variant: its status or why it failed, and the client's response if begun."""
    upstream = config.upstream(variant)
    session = request.app[RUNTIME].session
    assert session is not None  # noqa: S101 (opened before the first request)
    response: web.StreamResponse | None = None
    try:
        async with session.post(
            upstream.url + upstream_path(config, variant, protocol),
            data=request.content,
            headers=forward_headers(request),
        ) as reply:
            response = web.StreamResponse(status=reply.status)
            response.headers.extend(decoded(end_to_end(reply.raw_headers)))
            tag(response, config, variant)
            if reply.content_length is not None:
                response.content_length = reply.content_length
            await response.prepare(request)
            async for chunk in reply.content.iter_chunked(CHUNK_BYTES):
                await response.write(chunk)
            await response.write_eof()
            return reply.status, response
    except FAILURES as error:
        failure = failure_of(error)
    return failure, response if response is not None and response.prepared else None
