"""What a rollout does after a window's verdict: advance, promote, hold or roll back.

Pure, so the engine (with real routers) and the simulator (bench/judge.py, `rollout plan`)
take exactly the same decisions.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from controller.rollout.judgement import GateResult, Verdict

PER_WINDOW_GATES = ("shadow_delta", "labels")
"""Gates judged on one window alone: failing one is a failed check, not a verdict on the
rollout (the sequential gates have already weighed every window when they fail)."""


@dataclass
class Progress:
    """The counters a rollout's decisions depend on."""

    step: int = 0
    failed_checks: int = 0
    insufficient_in_row: int = 0


@dataclass(frozen=True)
class Decision:
    """`advance`, `promote`, `hold` or `roll_back`, and why."""

    action: str
    why: str = ""


def wait_for_labels(
    verdict: Verdict, labelled_in_step: int, min_labels: int, waited_s: float, label_wait_s: float
) -> Verdict:
    """Hold a passing verdict until the step has `min_labels` labelled canary rows.

    While it has waited less than `label_wait_s`, the verdict becomes `waiting`; past that, a
    failed check (gate `labels`): a rollout that requires labels never advances without them.
    """
    if min_labels <= 0 or verdict.outcome != "pass" or labelled_in_step >= min_labels:
        return verdict
    if waited_s < label_wait_s:
        return replace(verdict, outcome="waiting")
    missing = GateResult(
        "labels", float(labelled_in_step), float(min_labels), False,
        f"{labelled_in_step} labelled canary rows in {waited_s:.0f} s; the step needs"
        f" {min_labels} within {label_wait_s:.0f} s",
    )  # fmt: skip
    return replace(verdict, outcome="fail", gates=[*verdict.gates, missing])


def decide(
    progress: Progress,
    verdict: Verdict | None,
    steps: int,
    max_failed_checks: int,
    max_insufficient_windows: int,
) -> Decision:
    """Update `progress` for one window's verdict (None: unreadable) and say what to do.

    A sequential gate that fails rolls back at once. A window that could not be read, or a
    per-window gate that failed, is a failed check; `max_failed_checks` of them roll back.
    Too little traffic holds the weight; `max_insufficient_windows` such windows in a row roll
    back, as a canary that cannot be judged is never promoted.
    """
    if verdict is not None and verdict.outcome == "pass":
        progress.insufficient_in_row = 0
        if progress.step + 1 >= steps:
            return Decision("promote", "all gates passed")
        progress.step += 1
        return Decision("advance")
    if verdict is not None and verdict.outcome == "waiting":
        return Decision("hold", "waiting for labels")
    if verdict is not None and verdict.outcome == "insufficient":
        progress.insufficient_in_row += 1
        if progress.insufficient_in_row >= max_insufficient_windows:
            return Decision(
                "roll_back", f"{progress.insufficient_in_row} windows in a row had too little"
                " traffic",
            )  # fmt: skip
        return Decision("hold", "too little traffic")
    failed = [gate for gate in verdict.gates if not gate.passed] if verdict else []
    sequential = [gate.gate for gate in failed if gate.gate not in PER_WINDOW_GATES]
    if sequential:
        return Decision("roll_back", f"failed checks: {', '.join(sequential)}")
    progress.failed_checks += 1
    why = ", ".join(gate.gate for gate in failed) or "metrics could not be read"
    if progress.failed_checks >= max_failed_checks:
        return Decision("roll_back", f"failed checks: {why}")
    return Decision("hold", why)
