"""The soak's clients: requests at a steady rate, and their labels, late, from a feed that
pauses and bursts; every outcome kept for the report.

Requests are sent open-loop (one every `1/rate` s, whatever the answers take), as users send,
on keep-alive connections; each outcome is kept with its time, status, variant and, for a
failure, its cause. A request whose answer was a 200 gets its true score posted to `/feedback`
`label_delay_s` later, in batches. The controller takes a batch whole or refuses it whole: a
batch refused because some id is not in the prediction log yet (404) is split in halves and
each half tried again later, so every label ends joined, or refused with the controller's
reason once it has been unknown for `give_up_s`.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from contracts.labels import MAX_LABELS
from training.dataset import DEFAULT_PATH, FEATURES, TARGET, load_dataset

MAX_IN_FLIGHT = 256
"""Requests awaiting an answer at most; past it a due request is counted as not sent."""
REQUEST_TIMEOUT_S = 30.0
LABEL_BATCH = 500


@dataclass
class Outcome:
    """One request: when it was sent and answered, and how."""

    sent: float
    done: float
    status: int
    """The HTTP status, or 0 when there was no answer (see `cause`)."""
    variant: str
    cause: str = ""
    """Why it failed: `refused`, `disconnected`, `timeout`, or `http <status>`."""
    detail: str = ""
    """The start of an error answer's body."""


@dataclass
class Label:
    """One label: its request, its value, when it is due, and how it ended."""

    request_id: str
    value: float
    answered: float
    due: float
    first_refused: float | None = None
    state: str = "waiting"
    """`waiting`, `joined`, or `refused`."""
    reason: str = ""


@dataclass
class Traffic:
    """Clients of one router: requests, their outcomes, and their labels."""

    router_url: str
    labels_token: str
    rate: float
    label_delay_s: float = 5.0
    give_up_s: float = 60.0
    outcomes: list[Outcome] = field(default_factory=list)
    labels: list[Label] = field(default_factory=list)
    not_sent: int = 0
    labels_paused: asyncio.Event = field(default_factory=asyncio.Event)
    """While set, no label is posted (the feed paused): they pile up, then come in a burst."""
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    _queue: deque[Label] = field(default_factory=deque)

    async def send(self) -> None:
        """Send dataset rows at `rate` per second until `stop`; wait for those in flight."""
        frame = load_dataset(DEFAULT_PATH)
        rows = frame[list(FEATURES)].to_dict(orient="records")
        bodies = [json.dumps({"dataframe_records": [row]}).encode() for row in rows]
        truths = frame[TARGET].astype(float).tolist()
        chance = random.Random(0)  # noqa: S311 (which row, not a secret)
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        in_flight: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession(timeout=timeout) as session:
            start, sent = time.monotonic(), 0
            while not self.stop.is_set():
                sent += 1
                await asyncio.sleep(max(0.0, start + sent / self.rate - time.monotonic()))
                if len(in_flight) >= MAX_IN_FLIGHT:
                    self.not_sent += 1
                    continue
                index = chance.randrange(len(rows))
                task = asyncio.create_task(self._one(session, bodies[index], truths[index]))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            await asyncio.gather(*in_flight)

    async def _one(self, session: aiohttp.ClientSession, body: bytes, truth: float) -> None:
        sent = time.time()
        headers = {"Content-Type": "application/json"}
        try:
            async with session.post(
                f"{self.router_url}/invocations", data=body, headers=headers
            ) as answer:
                body = await answer.read()
                variant = answer.headers.get("X-Model-Variant", "")
                failed = answer.status != 200
                cause = f"http {answer.status}" if failed else ""
                detail = body[:200].decode(errors="replace") if failed else ""
                outcome = Outcome(sent, time.time(), answer.status, variant, cause, detail)
                request_id = answer.headers.get("X-Request-Id", "")
        except aiohttp.ClientConnectorError:
            outcome = Outcome(sent, time.time(), 0, "", "refused")
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            outcome = Outcome(sent, time.time(), 0, "", "disconnected")
        except TimeoutError:
            outcome = Outcome(sent, time.time(), 0, "", "timeout")
        self.outcomes.append(outcome)
        if outcome.status == 200 and request_id:
            label = Label(request_id, truth, outcome.done, outcome.done + self.label_delay_s)
            self.labels.append(label)
            self._queue.append(label)

    async def label(self) -> None:
        """Post due labels every half second until `stop` and every label has ended."""
        headers = {"Authorization": f"Bearer {self.labels_token}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            while not (self.stop.is_set() and not self._queue):
                await asyncio.sleep(0.5)
                if self.labels_paused.is_set():
                    continue
                now = time.time()
                due: list[Label] = []
                while self._queue and self._queue[0].due <= now and len(due) < MAX_LABELS:
                    due.append(self._queue.popleft())
                for start in range(0, len(due), LABEL_BATCH):
                    await self._post(session, due[start : start + LABEL_BATCH])

    async def _post(self, session: aiohttp.ClientSession, batch: list[Label]) -> None:
        """Post `batch`; on a 404 split it and post the halves; what cannot be posted yet goes
        back to the queue."""
        body = [{"request_id": label.request_id, "label": label.value} for label in batch]
        try:
            async with session.post(f"{self.router_url}/feedback", json=body) as answer:
                status, text = answer.status, await answer.text()
        except (aiohttp.ClientError, TimeoutError):
            status, text = 0, "no answer"
        if status == 200:
            for label in batch:
                label.state = "joined"
        elif status == 404 and len(batch) > 1:
            middle = len(batch) // 2
            await self._post(session, batch[:middle])
            await self._post(session, batch[middle:])
        elif status == 404 or status in (400, 409):
            self._refused(batch[0], status, text)
        else:  # the router or the controller is restarting: later
            self._later(batch)

    def _refused(self, label: Label, status: int, text: str) -> None:
        now = time.time()
        if status == 404:
            label.first_refused = label.first_refused or now
            if now - label.first_refused < self.give_up_s:
                self._later([label])  # logged in a moment, or never: tried until give_up_s
                return
        label.state, label.reason = "refused", f"{status} {_message(text)}"

    def _later(self, batch: list[Label]) -> None:
        later = time.time() + 2.0
        for label in batch:
            label.due = later
        self._queue.extend(batch)

    def summary(self) -> dict[str, Any]:
        """Counts of requests and labels by outcome."""
        causes: dict[str, int] = {}
        for outcome in self.outcomes:
            if outcome.cause:
                causes[outcome.cause] = causes.get(outcome.cause, 0) + 1
        states: dict[str, int] = {}
        for label in self.labels:
            states[label.state] = states.get(label.state, 0) + 1
        return {
            "requests": {
                "sent": len(self.outcomes),
                "answered_200": sum(1 for o in self.outcomes if o.status == 200),
                "failed": sum(1 for o in self.outcomes if o.cause),
                "not_sent_client_bound": self.not_sent,
                "causes": causes,
            },
            "labels": {"posted": len(self.labels), **states},
        }


def _message(text: str) -> str:
    try:
        return str(json.loads(text).get("message", text))[:300]
    except (ValueError, AttributeError):
        return text[:300]
