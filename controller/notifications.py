"""Notifications: every change and rollout event, sent to the sinks an operator configured.

Every record the audit log takes (a weight, deploy, promote or rollback; a rollout started,
judged with its gates' figures, paused, resumed, ended) is also published here. Two kinds of
sink, each a URL given with `--notify` (or per rollout, `rollout start --notify`):

- a generic JSON webhook (`https://…`): the event as JSON, signed when a secret is configured
  (`--notify-secret-file`): `X-Mlcanary-Signature: t=<unix seconds>,v1=<hex>`, the HMAC-SHA256
  with the secret of `<t>.` followed by the body's bytes, as Stripe signs its webhooks, so a
  receiver checks both the body and its age (replays). `X-Mlcanary-Delivery` is the delivery's
  id, the same on every retry: a receiver that saw it already drops the copy.
- Slack's incoming webhook (`slack+https://hooks.slack.com/…`): `{"text": one line}` with a
  link to the operator page.

Off the control loop: `publish` only queues. Each sink has its own queue (bounded: when full the
oldest event is dropped and counted) and one sender, which delivers in order, retrying a
failed delivery with doubling backoff; a slow or dead receiver delays only its own queue, never a
rollout, a rollback or another sink. Deliveries are counted by result in
`mlcanary_notifications_total` and the last ones are kept for the page, with the sinks' URLs
shown without their secret parts (a Slack webhook's path is its secret).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal
from urllib.parse import urlparse

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge

from common.redaction import redact

log = logging.getLogger("controller")

SIGNATURE_HEADER = "X-Mlcanary-Signature"
DELIVERY_HEADER = "X-Mlcanary-Delivery"
EVENT_HEADER = "X-Mlcanary-Event"
SLACK_PREFIX = "slack+"
MAX_SINKS = 16
"""Sinks per controller, and per rollout: a bound on what one event fans out to."""
RECENT = 50
"""Deliveries kept for the page."""
Kind = Literal["webhook", "slack"]
Result = Literal["delivered", "failed", "dropped", "retried"]


@dataclass(frozen=True)
class Sink:
    """Where events go: the URL posted to, and in which format."""

    url: str
    kind: Kind

    @classmethod
    def parse(cls, given: str) -> Sink:
        """Read a `--notify` URL; raise ValueError saying what is wrong with it."""
        kind: Kind = "slack" if given.startswith(SLACK_PREFIX) else "webhook"
        url = given.removeprefix(SLACK_PREFIX)
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(
                f"a notification URL must be http(s):// or slack+https://, got {redact(given)!r}"
            )
        return cls(url, kind)

    @property
    def shown(self) -> str:
        """The URL as pages and logs show it: scheme, host and port; path and query hidden."""
        parsed = urlparse(self.url)
        host = parsed.hostname or ""
        port = f":{parsed.port}" if parsed.port else ""
        prefix = SLACK_PREFIX if self.kind == "slack" else ""
        hidden = "/***" if parsed.path.strip("/") or parsed.query else ""
        return f"{prefix}{parsed.scheme}://{host}{port}{hidden}"


@dataclass
class Delivery:
    """One event to one sink: its state as the page shows it."""

    id: str
    event: str
    sink: str
    state: Literal["pending", "delivered", "failed", "dropped"] = "pending"
    attempts: int = 0
    last_error: str = ""
    time: float = field(default_factory=time.time)


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """Return the signature header's value for `body` sent at `timestamp`."""
    digest = hmac.new(secret, b"%d." % timestamp + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def summary(record: dict[str, Any], model: str) -> str:
    """One readable line for a person: the model, what happened, why."""
    action = str(record.get("action", "event"))
    reason = str(record.get("reason") or "").strip()
    return f"{model}: {action}" + (f": {reason}" if reason else "")


@dataclass(frozen=True)
class NotificationMetrics:
    """`mlcanary_notifications_*` on the controller's /metrics."""

    deliveries: Counter
    backlog: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> NotificationMetrics:
        """Register the counters."""
        metrics = cls(
            Counter("mlcanary_notifications", "Notification deliveries by sink kind and result.",
                    ["kind", "result"], registry=registry),
            Gauge("mlcanary_notification_backlog", "Events waiting to be delivered, all sinks.",
                  registry=registry),
        )  # fmt: skip
        for kind in ("webhook", "slack"):
            for result in ("delivered", "failed", "dropped", "retried"):
                metrics.deliveries.labels(kind, result)
        return metrics


@dataclass
class Notifier:
    """Queues events per sink and delivers them off the control loop."""

    sinks: tuple[Sink, ...]
    secret: bytes | None
    session: aiohttp.ClientSession
    metrics: NotificationMetrics
    model: str = ""
    page_url: str = ""
    max_queue: int = 1000
    attempts: int = 3
    """Tries for an event its receiver refuses (a 4xx other than 408 and 429)."""
    first_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    timeout_s: float = 5.0
    recent: deque[Delivery] = field(default_factory=lambda: deque(maxlen=RECENT))
    _queues: dict[Sink, deque[tuple[Delivery, dict[str, Any]]]] = field(default_factory=dict)
    _wakes: dict[Sink, asyncio.Event] = field(default_factory=dict)
    _senders: dict[Sink, asyncio.Task[None]] = field(default_factory=dict)

    def publish(self, record: dict[str, Any], also: Iterable[Sink] = ()) -> None:
        """Queue `record` for every sink (and `also`, a rollout's own); never waits."""
        for sink in dict.fromkeys((*self.sinks, *also)):
            self._enqueue(sink, record)

    def _enqueue(self, sink: Sink, record: dict[str, Any]) -> None:
        queue = self._queues.setdefault(sink, deque())
        if len(queue) >= self.max_queue:
            dropped, _ = queue.popleft()
            dropped.state, dropped.last_error = "dropped", "the queue was full"
            self.metrics.deliveries.labels(sink.kind, "dropped").inc()
        delivery = Delivery(uuid.uuid4().hex, str(record.get("action", "event")), sink.shown)
        queue.append((delivery, record))
        self.recent.append(delivery)
        self._backlog()
        if sink not in self._senders:
            self._wakes[sink] = asyncio.Event()
            task = asyncio.get_running_loop().create_task(self._send_all(sink))
            self._senders[sink] = task
        self._wakes[sink].set()

    def _backlog(self) -> None:
        self.metrics.backlog.set(sum(len(queue) for queue in self._queues.values()))

    async def _send_all(self, sink: Sink) -> None:
        """Deliver the sink's queue in order, waiting for more when it is empty."""
        queue, wake = self._queues[sink], self._wakes[sink]
        while True:
            if not queue:
                wake.clear()
                await wake.wait()
                continue
            delivery, record = queue[0]
            await self._deliver(sink, delivery, record)
            if queue and queue[0][0] is delivery:
                queue.popleft()
            self._backlog()

    async def _deliver(self, sink: Sink, delivery: Delivery, record: dict[str, Any]) -> None:
        """Post one event until it is taken, retrying with doubling backoff.

        A receiver that cannot be reached, or answers 5xx, 408 or 429, is retried for as long
        as it takes (its backlog drains when it returns; the queue's bound keeps it finite). One
        that refuses the event itself (another 4xx) is given `attempts` tries, then the event
        is marked failed and the next one goes.
        """
        body, headers = self._message(sink, delivery, record)
        backoff = self.first_backoff_s
        while True:
            delivery.attempts += 1
            if sink.kind == "webhook" and self.secret is not None:
                headers[SIGNATURE_HEADER] = sign(self.secret, int(time.time()), body)
            refused = False
            try:
                timeout = aiohttp.ClientTimeout(total=self.timeout_s)
                async with self.session.post(
                    sink.url, data=body, headers=headers, timeout=timeout, allow_redirects=False
                ) as answer:
                    await answer.content.read(4096)  # what it says is not kept: bounded
                    if 200 <= answer.status < 300:
                        delivery.state, delivery.last_error = "delivered", ""
                        self.metrics.deliveries.labels(sink.kind, "delivered").inc()
                        return
                    delivery.last_error = f"answered {answer.status}"
                    refused = 400 <= answer.status < 500 and answer.status not in (408, 429)
            except (aiohttp.ClientError, TimeoutError) as error:
                # An error may quote the URL, whose path is a Slack webhook's secret.
                said = str(error) or type(error).__name__
                delivery.last_error = said.replace(sink.url, sink.shown)
            if refused and delivery.attempts >= self.attempts:
                delivery.state = "failed"
                self.metrics.deliveries.labels(sink.kind, "failed").inc()
                log.warning("notification %s to %s refused: %s", delivery.event, sink.shown,
                            redact(delivery.last_error))  # fmt: skip
                return
            self.metrics.deliveries.labels(sink.kind, "retried").inc()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)

    def _message(
        self, sink: Sink, delivery: Delivery, record: dict[str, Any]
    ) -> tuple[bytes, dict[str, str]]:
        line = summary(record, self.model)
        headers = {"Content-Type": "application/json", DELIVERY_HEADER: delivery.id,
                   EVENT_HEADER: delivery.event}  # fmt: skip
        if sink.kind == "slack":
            link = f" <{self.page_url}|open the page>" if self.page_url else ""
            return redact(json.dumps({"text": line + link})).encode(), headers
        event = {"id": delivery.id, "event": delivery.event, "model": self.model,
                 "summary": line, "page": self.page_url or None, "record": record}  # fmt: skip
        # Credentials in any URI of the record (a tracking URI, say) never leave the process.
        return redact(json.dumps(event, default=str)).encode(), headers

    def state(self) -> dict[str, Any]:
        """Describe the sinks (secrets hidden) and the last deliveries, newest first."""
        return {
            "sinks": [sink.shown for sink in self.sinks],
            "signed": self.secret is not None,
            "recent": [asdict(delivery) for delivery in reversed(self.recent)],
        }

    async def close(self) -> None:
        """Stop the senders (what is still queued is not delivered)."""
        for task in self._senders.values():
            task.cancel()
        for task in self._senders.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._senders.clear()
