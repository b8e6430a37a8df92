"""A rollout window's data from a Prometheus server (PromQL `increase` over the interval).

For fleets where the controller cannot reach every router, or Prometheus already scrapes them.
A query that fails makes the window fail: a source that cannot be read is never a pass.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import aiohttp

from controller.errors import ControllerError
from controller.rollout.gates import Buckets, VariantWindow, Window

TIMEOUT = aiohttp.ClientTimeout(total=10)


Vector = list[dict[str, Any]]


async def query(session: aiohttp.ClientSession, prometheus: str, expression: str) -> Vector:
    """Run an instant query; return its vector, or raise ControllerError."""
    try:
        async with session.get(
            f"{prometheus}/api/v1/query", params={"query": expression}, timeout=TIMEOUT
        ) as answer:
            body = await answer.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        reason = str(error) or type(error).__name__
        raise ControllerError(f"Prometheus at {prometheus} cannot be read: {reason}") from None
    if not isinstance(body, dict) or body.get("status") != "success":
        raise ControllerError(f"Prometheus at {prometheus} refused {expression!r}: {body}")
    result: Vector = body["data"]["result"]
    return result


async def window_from_prometheus(
    session: aiohttp.ClientSession, prometheus: str, seconds: float
) -> Window:
    """Return the last `seconds` of traffic per variant, as Prometheus has scraped it."""
    span = f"{max(1, round(seconds))}s"

    async def by_variant(expression: str) -> dict[str, float]:
        return {
            item["metric"].get("variant", ""): float(item["value"][1])
            for item in await query(session, prometheus, expression)
        }

    async def buckets(metric: str) -> dict[str, Buckets]:
        found: dict[str, dict[float, float]] = defaultdict(dict)
        expression = f"sum by (variant, le) (increase({metric}[{span}]))"
        for item in await query(session, prometheus, expression):
            labels = item["metric"]
            found[labels.get("variant", "")][float(labels["le"])] = float(item["value"][1])
        return {
            variant: sorted(values.items(), key=lambda pair: (math.isinf(pair[0]), pair[0]))
            for variant, values in found.items()
        }

    requests = await by_variant(f"sum by (variant) (increase(mlcanary_requests_total[{span}]))")
    errors = await by_variant(
        f'sum by (variant) (increase(mlcanary_requests_total{{code=~"5.."}}[{span}]))'
    )
    latency = await buckets("mlcanary_request_duration_seconds_bucket")
    predictions = await buckets("mlcanary_prediction_value_bucket")
    shadow = await by_variant(f"sum(increase(mlcanary_shadow_prediction_delta_sum[{span}]))")
    shadow_count = await by_variant(
        f"sum(increase(mlcanary_shadow_prediction_delta_count[{span}]))"
    )

    def variant(name: str) -> VariantWindow:
        return VariantWindow(
            requests=requests.get(name, 0.0), errors=errors.get(name, 0.0),
            latency=latency.get(name, []), predictions=predictions.get(name, []),
        )  # fmt: skip

    return Window(
        stable=variant("stable"), canary=variant("canary"),
        shadow_delta_sum=shadow.get("", 0.0), shadow_delta_count=shadow_count.get("", 0.0),
    )  # fmt: skip
