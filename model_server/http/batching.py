"""Dynamic micro-batching: requests that arrive together are predicted in one call.

While the model is busy, new requests queue; when it is free, everything queued (up to a
maximum number of rows) goes in one `predict`. A lone request never waits for company
unless a window is configured. If a batch fails, each request is retried on its own, so
one bad request never fails its neighbours.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

Predict = Callable[[np.ndarray], np.ndarray]
BatchObserver = Callable[[int, int], None]


@dataclass
class _Pending:
    rows: np.ndarray
    future: asyncio.Future[np.ndarray]


class MicroBatcher:
    """Queue row blocks and predict them in batches on one executor."""

    def __init__(
        self,
        predict: Predict,
        executor: Executor,
        *,
        max_rows: int = 512,
        window_seconds: float = 0.0,
        observe: BatchObserver = lambda _rows, _requests: None,
    ) -> None:
        self._predict = predict
        self._executor = executor
        self._max_rows = max_rows
        self._window = window_seconds
        self._observe = observe
        self._queue: deque[_Pending] = deque()
        self._worker: asyncio.Task[None] | None = None

    async def predict(self, rows: np.ndarray) -> np.ndarray:
        """Return the predictions for exactly these rows, in order."""
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(rows, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            if self._window and self._queued_rows() < self._max_rows:
                await asyncio.sleep(self._window)
            batch = self._take()
            self._observe(sum(len(item.rows) for item in batch), len(batch))
            stacked = batch[0].rows if len(batch) == 1 else np.concatenate([i.rows for i in batch])
            try:
                predictions = await loop.run_in_executor(self._executor, self._predict, stacked)
            # One request's rows must not fail the others: each is retried on its own.
            except Exception as error:  # noqa: BLE001
                if len(batch) == 1:
                    _settle(batch[0], error)
                else:
                    await self._predict_one_by_one(batch)
                continue
            self._deliver(batch, predictions)

    def _queued_rows(self) -> int:
        return sum(len(item.rows) for item in self._queue)

    def _take(self) -> list[_Pending]:
        """Take queued requests up to the row limit; always at least one."""
        batch = [self._queue.popleft()]
        rows = len(batch[0].rows)
        while self._queue and rows + len(self._queue[0].rows) <= self._max_rows:
            item = self._queue.popleft()
            rows += len(item.rows)
            batch.append(item)
        return batch

    @staticmethod
    def _deliver(batch: list[_Pending], predictions: np.ndarray) -> None:
        start = 0
        for item in batch:
            end = start + len(item.rows)
            _settle(item, predictions[start:end])
            start = end

    async def _predict_one_by_one(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        for item in batch:
            try:
                result = await loop.run_in_executor(self._executor, self._predict, item.rows)
            # The failure belongs to this request alone.
            except Exception as error:  # noqa: BLE001
                _settle(item, error)
            else:
                _settle(item, result)


def _settle(item: _Pending, outcome: np.ndarray | Exception) -> None:
    """Hand a request its result or error, unless its client already went away."""
    if item.future.done():
        return
    if isinstance(outcome, Exception):
        item.future.set_exception(outcome)
    else:
        item.future.set_result(outcome)
