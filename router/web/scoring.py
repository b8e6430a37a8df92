"""Scoring on the aiohttp plane, in either protocol: choose, send, settle, answer, shadow.

`POST /invocations` and V2's `POST /v2/models/MODEL/infer` (see `routing.protocols`). The raw
data plane (`router.plane.dataplane`) answers most scoring requests itself; this is the path
for the rest (shadowed, forced through the app, or `--no-fast-path`) and for `/predict`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict

from contracts.routing import Protocol, RoutingConfig, Variant
from router.proxy.exchange import Answer, exchange, forward_headers
from router.proxy.policy import Answered, Failure, failure_answer
from router.routing.protocols import upstream_path
from router.telemetry.predictions import single_numbers
from router.web.state import JSON, POLICY, RNG, RUNTIME, SHADOW, TABLE


async def invocations(request: web.Request) -> web.Response:
    """Proxy MLflow's scoring request to the chosen variant, failing over from the canary."""
    return await score(request, request.app[TABLE].current, "mlflow")


async def score(request: web.Request, config: RoutingConfig, protocol: Protocol) -> web.Response:
    """Proxy a scoring request of `protocol` on `config` (this request finishes on it)."""
    app = request.app
    body = await request.read()
    started = time.perf_counter()
    headers = forward_headers(request)
    routed = await route(app, config, body, headers, request.headers, protocol)
    response = answer_client(config, routed.variant, routed.outcome, protocol)
    version = config.upstream(routed.variant).version
    answered = routed.outcome.body if isinstance(routed.outcome, Answer) else None
    request_id = request.headers.get("X-Request-Id", "").encode("latin-1")
    client_id = request.headers.get("X-Client-Request-Id", "").encode("latin-1")
    stable = app[POLICY].answered(
        routed.variant, version, response.status, started, answered,
        (request_id, body, client_id),
        forced=routed.forced,
    )  # fmt: skip
    if routed.variant == "stable" and response.status == 200 and not routed.forced:
        maybe_shadow(app, config, body, headers, stable, request_id, protocol)
    return response


def maybe_shadow(
    app: web.Application,
    config: RoutingConfig,
    body: bytes,
    headers: CIMultiDict[str],
    stable: Answered,
    request_id: bytes,
    protocol: Protocol = "mlflow",
) -> None:
    """Copy this stable-routed request to the canary for `shadow.percent` of requests."""
    canary = config.canary
    if canary is None or config.shadow.percent <= 0:
        return
    if app[RNG].random() * 100 >= config.shadow.percent:
        return
    session = app[RUNTIME].session
    assert session is not None  # noqa: S101 (opened before the first request)
    prediction_log = app[POLICY].log
    record = None
    if stable.logged and prediction_log is not None:
        version = canary.version

        def record(answer: bytes) -> bool:
            return prediction_log.record(request_id, "shadow", version, body, answer, draw=False)

    app[SHADOW].copy(
        lambda: exchange(
            session, canary.url, upstream_path(config, "canary", protocol), body, headers
        ),
        single_numbers(stable.outputs),
        record,
    )


@dataclass(frozen=True)
class Routed:
    """Which variant finally answered, and how."""

    variant: Variant
    outcome: Answer | Failure
    forced: bool = False
    """An operator forced the request's variant (counted apart, never judged)."""


async def route(
    app: web.Application,
    config: RoutingConfig,
    body: bytes,
    headers: CIMultiDict[str],
    asked: Mapping[str, str],
    protocol: Protocol = "mlflow",
) -> Routed:
    """Choose a variant, send, and retry on stable as the proxy policy says.

    The choice reads the client's headers `asked`; `headers` are those passed on.
    """
    policy = app[POLICY]
    variant, forced = policy.choose(config, asked)
    outcome = await send(app, config, variant, protocol, body, headers)
    retry = policy.settle(config, variant, status_of(outcome), first_try=True)
    if retry is not None:
        variant = retry
        outcome = await send(app, config, variant, protocol, body, headers)
        policy.settle(config, variant, status_of(outcome), first_try=False)
    return Routed(variant, outcome, forced)


def status_of(outcome: Answer | Failure) -> int | Failure:
    """Return what the policy settles: the upstream's status, or why it did not answer."""
    return outcome if isinstance(outcome, Failure) else outcome.status


async def send(
    app: web.Application,
    config: RoutingConfig,
    variant: Variant,
    protocol: Protocol,
    body: bytes,
    headers: CIMultiDict[str],
) -> Answer | Failure:
    """Exchange once with a variant's upstream, at its path for the protocol.

    Timeouts are the session's: connect within `connect_timeout_s`, all within `total_timeout_s`.
    """
    session = app[RUNTIME].session
    assert session is not None  # noqa: S101 (opened before the first request)
    path = upstream_path(config, variant, protocol)
    return await exchange(session, config.upstream(variant).url, path, body, headers)


def answer_client(
    config: RoutingConfig,
    variant: Variant,
    outcome: Answer | Failure,
    protocol: Protocol = "mlflow",
) -> web.Response:
    """Turn the exchange into the client's answer, tagged with the variant and version."""
    if isinstance(outcome, Failure):
        status, error = failure_answer(variant, outcome, protocol)
        response = web.Response(status=status, body=error, headers={"Content-Type": JSON})
    else:
        response = web.Response(status=outcome.status, body=outcome.body, headers=outcome.headers)
    tag(response, config, variant)
    return response


def tag(response: web.StreamResponse, config: RoutingConfig, variant: Variant) -> None:
    """Set the router's `X-Model-Variant` and `X-Model-Version` (once each)."""
    response.headers["X-Model-Variant"] = variant
    response.headers["X-Model-Version"] = config.upstream(variant).version
