"""The proxy policy's retry budget: a share of recent traffic plus a floor, over a sliding
window, as Finagle's RetryBudget (a fake clock makes the counts exact)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from router.proxy.policy import RetryBudget
from router.proxy.requestids import client_ids, new_request_id, settle_request_id


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def _spend(budget: RetryBudget, tries: int) -> int:
    return sum(budget.try_withdraw() for _ in range(tries))


def test_the_floor_allows_ten_retries_a_second_without_traffic() -> None:
    """With no requests at all, 10 s x 10/s = 100 retries fit in a window, not 101."""
    budget = RetryBudget(clock=Clock())
    assert _spend(budget, 1000) == 100


def test_retries_are_a_fifth_of_the_requests_of_the_window() -> None:
    """1,000 requests in a second allow 200 retries more than the floor, whatever the
    concurrency they came at."""
    budget = RetryBudget(clock=Clock())
    for _ in range(1000):
        budget.deposit()
    assert _spend(budget, 10_000) == 200 + 100


def test_the_window_slides() -> None:
    """Spent retries and old requests leave the window after 10 s, a tenth at a time."""
    clock = Clock()
    budget = RetryBudget(clock=clock)
    assert _spend(budget, 1000) == 100
    clock.now += 5
    assert _spend(budget, 1000) == 0  # the first 100 are still in the window
    clock.now += 5.5
    assert _spend(budget, 1000) == 100
    for _ in range(500):
        budget.deposit()
    assert _spend(budget, 1000) == 100  # a fifth of 500
    clock.now += 11
    assert _spend(budget, 1000) == 100  # those 500 requests have left the window


def test_a_failing_stable_gets_at_most_the_budget_again() -> None:
    """Simulated: 10,000 requests over 20 s, every one failing on the canary and asking for a
    retry; retries stay within a fifth of the traffic plus the floor in every 10 s window."""
    clock = Clock()
    budget = RetryBudget(clock=clock)
    retried_at = []
    for i in range(10_000):
        clock.now = 1000 + i * 0.002
        budget.deposit()
        if budget.try_withdraw():
            retried_at.append(clock.now)
    for start in range(1000, 1011):
        in_window = [t for t in retried_at if start <= t < start + 10]
        assert len(in_window) <= 0.2 * 5000 + 100 + 0.2 * 500  # a window spans 11 slots at most
    assert len(retried_at) <= 0.2 * 10_000 + 2 * 100 + 100
    assert len(retried_at) >= 0.2 * 10_000


def test_request_ids_are_fresh_and_random_across_refills_of_the_pool() -> None:
    """1,000 ids (the random pool refilled three times): all different, 32 hex digits each."""
    ids = [new_request_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(re.fullmatch(rb"[0-9a-f]{32}", made) for made in ids)


def test_only_a_client_s_id_headers_are_dropped_and_its_id_kept_beside_the_new_one() -> None:
    plain = [(b"Host", b"r"), (b"Content-Type", b"application/json")]
    assert client_ids(plain) == (None, False)
    made = settle_request_id(plain, None, False)
    assert plain == [(b"Host", b"r"), (b"Content-Type", b"application/json"),
                     (b"X-Request-Id", made)]  # fmt: skip
    sent = [(b"x-request-id", b"order-1"), (b"X-CLIENT-REQUEST-ID", b"forged"), (b"Host", b"r")]
    given, present = client_ids(sent)
    assert (given, present) == (b"order-1", True)
    made = settle_request_id(sent, given, present)
    assert sent == [(b"Host", b"r"), (b"X-Client-Request-Id", b"order-1"), (b"X-Request-Id", made)]
    assert made != b"order-1"
