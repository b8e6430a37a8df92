"""Each variant's live traffic for the operator page: the routers' /metrics, every few seconds.

A page showing the canary polls `/api/overview`; the first poll starts a sampler that reads the
routers' /metrics every `SAMPLE_S` (the same reading a rollout window makes, `take_snapshot`)
and keeps what happened between two readings (`summarize_window`: requests per second, 5xx
share, p50 and p99, per variant) for the last `KEPT_S`, with the prediction counts behind the
distribution plot. A rollout keeps it sampling too (`keep_up`, `busy`), so that a page opened in
the middle of one shows the hour behind it. With no poll for `IDLE_S` and no rollout it stops:
nobody watching costs the routers nothing. A reading that fails (a router down) leaves a gap,
said in `problem`. It only reads: the buckets the plot counts in are cut by the controller's
own loop (`serve.keep_buckets`), never because an anonymous reader polled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from controller.errors import ControllerError
from controller.rollout.gates import summarize_window
from controller.rollout.judgement import Categories
from controller.rollout.window import Snapshot, window_between

log = logging.getLogger("controller")
SAMPLE_S = 2.0
KEPT_S = 3600.0
"""The history a page is shown: the last hour."""
SHOWN_POINTS = 360
"""At most this many points of it are sent per poll (older samples are thinned out evenly)."""
PREDICTIONS_S = 300.0
"""The distribution plot sums the last five minutes of prediction counts."""
IDLE_S = 60.0

Read = Callable[[], Awaitable[Snapshot]]


@dataclass
class Sample:
    """What each variant did between two readings of the routers."""

    time: float
    variants: dict[str, dict[str, float | None]]
    predictions: dict[str, dict[str, Categories]]
    """By variant, then model output: prediction counts per bucket or class."""


@dataclass
class LiveTraffic:
    """Samples of the routers' traffic while someone watches (see the module's note)."""

    read: Read
    """Take a snapshot of every router's /metrics (ControllerError if one cannot be read)."""
    samples: deque[Sample] = field(default_factory=lambda: deque(maxlen=int(KEPT_S / SAMPLE_S)))
    problem: str = ""
    watched_at: float = 0.0
    task: asyncio.Task[None] | None = None
    busy: Callable[[], bool] = lambda: False
    """Whether something besides a page needs the history kept (a rollout running)."""

    def watch(self) -> dict[str, Any]:
        """Return the samples so far (and keep sampling for `IDLE_S` more)."""
        self.watched_at = time.monotonic()
        self.keep_up()
        kept = list(self.samples)
        stride = max(1, -(-len(kept) // SHOWN_POINTS))  # ceil: at most SHOWN_POINTS points
        shown = kept[::-1][::stride][::-1]  # thinned from the newest back: the last is kept
        return {
            "sample_s": SAMPLE_S,
            "kept_s": KEPT_S,
            "series": [{"time": s.time, **s.variants} for s in shown],
            "predictions": self._predictions(time.time() - PREDICTIONS_S),
            "problem": self.problem,
        }

    def keep_up(self) -> None:
        """Start sampling if it is not running."""
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._sample())

    async def close(self) -> None:
        """Stop sampling."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def _sample(self) -> None:
        before: Snapshot | None = None
        taken_at = 0.0
        while time.monotonic() - self.watched_at < IDLE_S or self.busy():
            try:
                after, now = await self.read(), time.time()
            except ControllerError as error:
                self.problem, before = str(error), None  # a gap, not a wrong difference
            else:
                self.problem = ""
                if before is not None and now > taken_at:
                    self.samples.append(_sample_between(before, after, now - taken_at, now))
                before, taken_at = after, now
            await asyncio.sleep(SAMPLE_S)

    def _predictions(self, since: float) -> dict[str, dict[str, Categories]]:
        """Sum the prediction counts of the samples since `since`, by output then variant."""
        summed: dict[str, dict[str, Categories]] = {}
        for sample in self.samples:
            if sample.time < since:
                continue
            for variant, outputs in sample.predictions.items():
                for output, counts in outputs.items():
                    into = summed.setdefault(output, {}).setdefault(variant, {})
                    for category, count in counts.items():
                        into[category] = into.get(category, 0.0) + count
        return summed


def _sample_between(before: Snapshot, after: Snapshot, seconds: float, now: float) -> Sample:
    window = window_between(before, after)
    variants = summarize_window(window)
    for figures in variants.values():
        figures["requests_per_s"] = (figures["requests"] or 0.0) / seconds
    return Sample(now, variants, {"stable": window.stable.predictions,
                                  "canary": window.canary.predictions})  # fmt: skip
