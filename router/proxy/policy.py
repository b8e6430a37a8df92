"""The proxy policy, with no I/O in it: one set of rules for every path a request can take.

The raw fast path, streamed uploads and the aiohttp plane all choose a variant, settle an
upstream's outcome (answer it, retry it on stable, or fail it), spend the retry budget, record
passive health and metrics, and word router-made errors through this module, so that the same
outcome gets the same answer whichever path carried it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from contracts.errors import error_body
from contracts.routing import Protocol, RoutingConfig, Variant
from contracts.v2 import v2_error
from router.predictionlog.writer import PredictionLog
from router.proxy.health import HealthBoard
from router.routing.choosing import Choice, choose_variant, forced_variant
from router.settings import RouterSettings
from router.telemetry.metrics import RouterMetrics
from router.telemetry.predictions import Outputs, outputs_of

RETRYABLE_STATUSES = frozenset({502, 503})
"""Answers that say the upstream did not run the request (a prediction is safe to repeat)."""

HOP_BY_HOP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
        b"proxy-connection", b"te", b"trailer", b"trailers", b"transfer-encoding", b"upgrade",
        # Framed anew on each hop by the router itself:
        b"host", b"content-length", b"expect",
    }
)  # fmt: skip
"""Headers of one hop (RFC 9110 §7.6.1), never passed on in either direction."""
ROUTER_SET = frozenset({b"x-model-variant", b"x-model-version"})
"""Headers only the router sets: a client's or an upstream's copy is dropped."""
ROUTER_SECRETS = frozenset({b"x-force-token"})
"""Credentials meant for the router: passed to its own app, never to an upstream's logs."""
APP_DROPPED = HOP_BY_HOP | ROUTER_SET
"""From a request relayed to the router's own app (which reads the force token)."""
DROPPED = APP_DROPPED | ROUTER_SECRETS
REQUEST_IDS = frozenset({b"x-request-id", b"x-client-request-id"})
ANSWER_DROPPED = DROPPED | REQUEST_IDS
"""From an upstream's answer: the request ids are the router's to set (on every answer)."""
APP_ANSWER_DROPPED = HOP_BY_HOP | REQUEST_IDS
"""From the router's own app's answer: its `X-Model-*` are kept; the id is set by the front."""


def end_to_end(
    headers: Iterable[tuple[bytes, bytes]], dropped: frozenset[bytes] = DROPPED
) -> list[tuple[bytes, bytes]]:
    """Return the headers to pass on to the next hop.

    Left out: hop-by-hop ones, those named in `Connection`, and (unless `dropped` says
    otherwise) the router's own. One pass in the usual case (on the hot path).
    """
    kept = []
    named: set[bytes] | None = None
    for pair in headers:
        lowered = pair[0].lower()
        if lowered not in dropped:
            kept.append(pair)
        elif lowered == b"connection":
            tokens = {token.strip().lower() for token in pair[1].split(b",")} - dropped
            named = tokens if named is None else named | tokens
    if named:
        kept = [(name, value) for name, value in kept if name.lower() not in named]
    return kept


@dataclass(frozen=True, slots=True)
class Failure:
    """Why no answer came: connect, reset or timeout."""

    reason: str
    detail: str


Outcome = int | Failure
"""What an upstream exchange came to: the status it answered, or why it did not."""


def failure_answer(
    variant: Variant, failure: Failure, protocol: Protocol = "mlflow"
) -> tuple[int, bytes]:
    """Answer the client when no upstream answered: 504 for a timeout, else 503.

    In the protocol's error shape: MLflow's `error_code` and `message`, or V2's `error`.
    """
    if failure.reason == "timeout":
        status, code = 504, "DEADLINE_EXCEEDED"
        message = f"the {variant} model server did not answer in time"
    else:
        status, code = 503, "TEMPORARILY_UNAVAILABLE"
        message = f"the {variant} model server cannot be reached ({failure.reason})"
    return status, v2_error(message) if protocol == "v2" else error_body(code, message)


@dataclass
class RetryBudget:
    """Retries as a share of recent traffic, as Finagle's RetryBudget: a rate, not a count.

    Over a sliding window of `window_s` seconds, retries may be at most `percent` of the
    requests plus `min_per_s` a second. A canary that dies under any concurrency is covered (its
    in-flight requests are a few seconds' worth of traffic at most), and a stable that fails
    too is sent at most that share again, never twice the load.
    """

    percent: float = 0.2
    min_per_s: float = 10.0
    window_s: float = 10.0
    clock: Callable[[], float] = time.monotonic
    slots: int = 10
    """The window moves a slot at a time: a tenth of it by default."""
    _requests: list[int] = field(init=False)
    _retries: list[int] = field(init=False)
    _slot: int = field(init=False)
    _slots_per_s: float = field(init=False)

    def __post_init__(self) -> None:
        self._requests, self._retries = [0] * self.slots, [0] * self.slots
        self._slots_per_s = self.slots / self.window_s
        self._slot = int(self.clock() * self._slots_per_s)

    def deposit(self) -> None:
        """Count one request (not a retry) toward the budget."""
        if int(self.clock() * self._slots_per_s) != self._slot:
            self._advance()
        self._requests[self._slot % self.slots] += 1

    def try_withdraw(self) -> bool:
        """Spend one retry if the window still allows it."""
        self._advance()
        allowed = self.percent * sum(self._requests) + self.min_per_s * self.window_s
        if sum(self._retries) + 1 > allowed:
            return False
        self._retries[self._slot % self.slots] += 1
        return True

    def _advance(self) -> None:
        now = int(self.clock() * self._slots_per_s)
        if now == self._slot:
            return
        for passed in range(self._slot + 1, min(now, self._slot + self.slots) + 1):
            self._requests[passed % self.slots] = 0
            self._retries[passed % self.slots] = 0
        self._slot = now


@dataclass
class ProxyPolicy:
    """Choose, settle, budget, health and metrics: what every proxied request goes through."""

    settings: RouterSettings
    metrics: RouterMetrics
    health: HealthBoard
    rng: random.Random
    budget: RetryBudget
    log: PredictionLog | None = None
    """Where a share of answered predictions is recorded (see `router.predictionlog.writer`)."""

    def choose(self, config: RoutingConfig, headers: Mapping[str, str]) -> Choice:
        """Pick the variant of a new request (and count it toward the retry budget).

        An operator's force wins, even over ejection (an operator can always reach a variant);
        a refused one is counted and the request routed as live traffic.
        """
        self.budget.deposit()
        token = self.settings.force_token
        forced = forced_variant(config, headers, token.get_secret_value() if token else None)
        if forced == "stable" or forced == "canary":
            return Choice(forced, forced=True)
        if forced is not None:
            self.metrics.force_refused.labels(forced).inc()
        return Choice(choose_variant(config, headers, self.rng, self.health.of_config(config)))

    def settle(
        self,
        config: RoutingConfig,
        variant: Variant,
        outcome: Outcome,
        *,
        first_try: bool,
        replayable: bool = True,
    ) -> Variant | None:
        """Record an exchange's outcome; return the variant to retry on, or None to answer.

        Only a canary's first try is retried, on stable, within the budget: after a failure to
        connect always (nothing was sent), after a reset, a timeout or a 502/503 only when the
        body can be sent again (`replayable`: it was buffered, not streamed).
        """
        upstream_health = self.health.of_config(config).of(variant)
        if isinstance(outcome, Failure):
            self.metrics.upstream_errors.labels(variant, outcome.reason).inc()
            upstream_health.failed(outcome.reason, self.settings)
            retryable = replayable or outcome.reason == "connect"
        else:
            if outcome >= 500:
                self.metrics.upstream_errors.labels(variant, "status_5xx").inc()
                upstream_health.failed(f"answered {outcome}", self.settings)
            else:
                upstream_health.succeeded()
            retryable = replayable and outcome in RETRYABLE_STATUSES
        if not (first_try and variant == "canary" and retryable):
            return None
        if not self.budget.try_withdraw():
            return None
        self.metrics.failovers.labels("canary").inc()
        return "stable"

    def answered(
        self,
        variant: Variant,
        version: str,
        status: int,
        started: float,
        body: bytes | None,
        request: tuple[bytes, bytes, bytes] | None = None,
        *,
        forced: bool = False,
    ) -> Answered:
        """Count the client's answer, its latency since `started`, and a 200's predictions.

        `request`: the request's id, body and client's id, to record the answer in the log.
        The predictions, and whether the answer was logged, are returned for the shadow copy.
        A `forced` answer is counted apart and nothing else: its predictions and its log record
        would let an operator's probes into what the rollout judges.
        """
        self.metrics.answered(variant, version, status, time.perf_counter() - started, forced)
        if status != 200 or not body or forced:
            return NOT_ANSWERED
        logged = False
        if request is not None and self.log is not None:
            logged = self.log.record(
                request[0], variant, version, request[1], body, client_id=request[2]
            )
        outputs = outputs_of(body)
        self.metrics.predicted(variant, outputs)
        return Answered(outputs, logged)


class Answered(NamedTuple):
    """A 200's predictions, and whether the prediction log recorded it."""

    outputs: Outputs | None
    logged: bool


NOT_ANSWERED = Answered(None, False)
