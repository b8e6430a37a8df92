"""A rollout window's data from a Prometheus server (PromQL `increase` over the interval).

For fleets where the controller cannot reach every router, or Prometheus already scrapes them.
A query that fails makes the window fail: a source that cannot be read is never a pass.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import aiohttp

from contracts.metrics import (
    PREDICTION_CLASS,
    PREDICTION_VALUE,
    REQUEST_DURATION,
    REQUESTS,
    SHADOW_DELTA,
    SINGLE_OUTPUT,
)
from controller.errors import ControllerError
from controller.rollout.histograms import categories_of, sorted_buckets
from controller.rollout.judgement import Buckets, Categories, VariantWindow, Window

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

    async def by_labels(metric: str, *labels: str) -> dict[tuple[str, ...], float]:
        expression = f"sum by ({', '.join(labels)}) (increase({metric}[{span}]))"
        return {
            tuple(item["metric"].get(label, SINGLE_OUTPUT if label == "output" else "")
                  for label in labels): float(item["value"][1])
            for item in await query(session, prometheus, expression)
        }  # fmt: skip

    def buckets(found: dict[tuple[str, ...], float]) -> dict[tuple[str, ...], Buckets]:
        """Group by every label but the last, `le`, into sorted cumulative buckets."""
        grouped: dict[tuple[str, ...], dict[float, float]] = defaultdict(dict)
        for (*group, le), value in found.items():
            grouped[tuple(group)][float(le)] = value
        return {group: sorted_buckets(values) for group, values in grouped.items()}

    requests = await by_variant(f"sum by (variant) (increase({REQUESTS.total}[{span}]))")
    errors = await by_variant(
        f'sum by (variant) (increase({REQUESTS.total}{{code=~"5.."}}[{span}]))'
    )
    latency = buckets(await by_labels(REQUEST_DURATION.bucket, "variant", "le"))
    predictions: dict[str, dict[str, Categories]] = defaultdict(dict)
    numeric = await by_labels(PREDICTION_VALUE.bucket, "variant", "output", "le")
    for (name, output), cumulative in buckets(numeric).items():
        predictions[name][output] = categories_of(cumulative)
    for (name, output, label), count in (
        await by_labels(PREDICTION_CLASS.total, "variant", "output", "class")
    ).items():
        predictions[name].setdefault(output, {})[label] = count
    shadow = await by_variant(f"sum(increase({SHADOW_DELTA.sum}[{span}]))")
    shadow_count = await by_variant(f"sum(increase({SHADOW_DELTA.count}[{span}]))")

    def variant(name: str) -> VariantWindow:
        return VariantWindow(
            requests=requests.get(name, 0.0), errors=errors.get(name, 0.0),
            latency=latency.get((name,), []), predictions=predictions.get(name, {}),
        )  # fmt: skip

    return Window(
        stable=variant("stable"), canary=variant("canary"),
        shadow_delta_sum=shadow.get("", 0.0), shadow_delta_count=shadow_count.get("", 0.0),
    )  # fmt: skip


HISTORY = "1h"
"""How far back a rollout's baseline from Prometheus looks (stable's latency before it)."""


async def latency_history(
    session: aiohttp.ClientSession, prometheus: str, variant: str, version: str
) -> Buckets:
    """Return the latency buckets of `variant` at `version` over the last `HISTORY`."""
    selector = f'{{variant="{_quoted(variant)}",version="{_quoted(version)}"}}'
    expression = f"sum by (le) (increase({REQUEST_DURATION.bucket}{selector}[{HISTORY}]))"
    vector = await query(session, prometheus, expression)
    try:
        return sorted_buckets(
            {float(item["metric"]["le"]): float(item["value"][1]) for item in vector}
        )
    except (KeyError, IndexError, TypeError, ValueError) as error:
        raise ControllerError(
            f"Prometheus at {prometheus} answered {expression!r} with what is not samples:"
            f" {type(error).__name__}: {error}"
        ) from None


def _quoted(value: str) -> str:
    """Escape a label value for a PromQL string."""
    return value.replace("\\", "\\\\").replace('"', '\\"')
