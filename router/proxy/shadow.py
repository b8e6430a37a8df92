"""Shadow traffic: copy some stable-routed requests to the canary and compare predictions.

The copy runs in the background after the client's answer is decided; it never delays or
changes that answer. Copies in flight are bounded; past the bound they are dropped and counted.
When stable's answer was logged, the canary's is logged too, as variant `shadow` under the same
request id: labels then judge both models on the same rows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from router.proxy.exchange import Answer
from router.proxy.policy import Failure
from router.telemetry.metrics import RouterMetrics
from router.telemetry.predictions import predictions_of

MATCH_TOLERANCE = 1e-9

Send = Callable[[], Awaitable[Answer | Failure]]
Record = Callable[[bytes], object]


@dataclass
class Shadower:
    """Runs bounded background copies to the canary and records how they compare."""

    metrics: RouterMetrics
    limit: int
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def copy(
        self,
        send_to_canary: Send,
        expected: list[float] | None,
        record: Record | None = None,
    ) -> None:
        """Start a copy unless `limit` are in flight (then count it as dropped).

        `record`: called with the canary's 200 body, to log it beside stable's logged answer
        (labels then judge both models on the same rows).
        """
        if len(self.tasks) >= self.limit:
            self.metrics.shadow_requests.labels("dropped").inc()
            return
        task = asyncio.create_task(self._compare(send_to_canary, expected, record))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _compare(
        self, send_to_canary: Send, expected: list[float] | None, record: Record | None
    ) -> None:
        """Compare the canary's predictions with stable's (already parsed) ones."""
        outcome = await send_to_canary()
        if record is not None and isinstance(outcome, Answer) and outcome.status == 200:
            record(outcome.body)
        got = predictions_of(outcome.body) if isinstance(outcome, Answer) else None
        if isinstance(outcome, Failure) or outcome.status != 200 or got is None or expected is None:
            self.metrics.shadow_requests.labels("error").inc()
            return
        if len(got) != len(expected):
            self.metrics.shadow_requests.labels("mismatch").inc()
            return
        deltas = [abs(a - b) for a, b in zip(got, expected, strict=True)]
        for delta in deltas:
            self.metrics.shadow_delta.observe(delta)
        same = all(delta <= MATCH_TOLERANCE for delta in deltas)
        self.metrics.shadow_requests.labels("match" if same else "mismatch").inc()

    async def close(self) -> None:
        """Cancel copies still in flight."""
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
