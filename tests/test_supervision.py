"""When a dead child is started again: at once after a steady run, with backoff in a loop."""

from __future__ import annotations

from common.supervision import RESTART_BACKOFF, STEADY_SECONDS, next_restart


def test_a_crash_loop_backs_off_up_to_the_last_delay() -> None:
    restarts, delays = 0, []
    for _ in range(len(RESTART_BACKOFF) + 2):
        restarts, delay = next_restart(restarts, ran_s=1.0)
        delays.append(delay)
    assert delays == [*RESTART_BACKOFF, RESTART_BACKOFF[-1], RESTART_BACKOFF[-1]]


def test_a_child_that_ran_steadily_starts_over_at_once() -> None:
    """Killed often, but each time after a steady run (a soak's faults): never backed off."""
    assert next_restart(5, ran_s=STEADY_SECONDS) == (0, 0.0)
    restarts, delay = next_restart(0, ran_s=STEADY_SECONDS - 1)
    assert (restarts, delay) == (1, RESTART_BACKOFF[0])
