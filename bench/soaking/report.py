"""The soak's arithmetic and its verdict: which failures the design allows, which verdicts were
right, which labels ended how, whether anything grows, and the report.

Growth is judged by each process's Theil-Sen slope after warm-up (the median of the slopes
between every pair of samples: a garbage collection or a burst moves it little, a leak moves it
all the way), over series long enough to tell (`MIN_SPAN_S`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.soaking.sampling import ProcessSample

WARM_UP_S = 300.0
"""Samples of a process's first five minutes are left out of its slope: imports, caches and
allocator arenas fill then."""
MIN_SPAN_S = 900.0
"""A slope is judged over at least 15 minutes of samples after warm-up; a shorter series (a
canary's server, the short run) is reported, not judged."""
MAX_RSS_MIB_PER_HOUR = 8.0
"""Resident memory may grow by less than this per hour after warm-up. At 20 requests a second,
a leak of 120 bytes per request (one small object) grows 8 MiB an hour: caught. Growth the
design holds (the controller's hour of live samples, the labelled rows it keeps, each bounded)
stays under it at the soak's rates."""
MAX_LOG_MIB_PER_HOUR = 2.0
"""The log folder may grow by less than this per hour: the system logs what happens (changes,
faults, a server's start), not what it serves; one line of 100 bytes per request at 20 a
second would be 7 MiB an hour."""
RETENTION_DAYS = 30.0
"""The router's prediction log retention (its default): the log's size at the end of it is
projected from the hour's growth."""
MAX_FILES_PER_HOUR = 6.0
"""Open files may grow by less than this per hour: a descriptor leaked per rollout (about one
a minute, in the hour-long run) or per fault is caught; connections opened and closed by the
pools come and go and leave the median slope flat."""


@dataclass
class Slope:
    """How one process's figure moved after warm-up."""

    role: str
    pid: int
    figure: str
    per_hour: float
    span_s: float
    judged: bool
    bound: float

    @property
    def grows(self) -> bool:
        """Judged, and at or past its bound."""
        return self.judged and self.per_hour >= self.bound


def theil_sen_per_hour(times: Sequence[float], values: Sequence[float]) -> float:
    """The median of the slopes between every pair of samples, per hour (0 with fewer than 2)."""
    if len(set(times)) < 2:
        return 0.0
    from scipy.stats import theilslopes

    return float(theilslopes(values, times).slope) * 3600


def slopes(samples: Sequence[ProcessSample]) -> list[Slope]:
    """Each process's slope of resident memory and of open files after its warm-up."""
    by_process: dict[tuple[str, int], list[ProcessSample]] = defaultdict(list)
    for sample in samples:
        by_process[(sample.role, sample.pid)].append(sample)
    found = []
    for (role, pid), series in sorted(by_process.items()):
        warm = [s for s in series if s.time >= series[0].time + WARM_UP_S]
        span = warm[-1].time - warm[0].time if len(warm) > 1 else 0.0
        times = [s.time for s in warm]
        for figure, values, bound in (
            ("rss_mib", [s.rss_mib for s in warm], MAX_RSS_MIB_PER_HOUR),
            ("open_files", [float(s.open_files) for s in warm], MAX_FILES_PER_HOUR),
        ):
            per_hour = theil_sen_per_hour(times, values)
            found.append(Slope(role, pid, figure, per_hour, span, span >= MIN_SPAN_S, bound))
    return found


def folder_checks(sizes: Sequence[tuple[float, dict[str, int]]]) -> list[tuple[bool, str]]:
    """The log folder's growth per hour after warm-up, judged over `MIN_SPAN_S` or more; the
    prediction log's, projected to its retention (reported: its bound is the retention)."""
    if not sizes:
        return [(False, "no folder was sampled")]
    warm = [(at, sized) for at, sized in sizes if at >= sizes[0][0] + WARM_UP_S]
    span = warm[-1][0] - warm[0][0] if len(warm) > 1 else 0.0
    times = [at for at, _ in warm]

    def per_hour(name: str) -> float:
        return theil_sen_per_hour(times, [sized.get(name, 0) / 2**20 for _, sized in warm])

    logs, predictions = per_hour("logs"), per_hour("predictions")
    found = [
        (span < MIN_SPAN_S or logs < MAX_LOG_MIB_PER_HOUR,
         f"logs grow {logs:.2f} MiB/h after warm-up (bound {MAX_LOG_MIB_PER_HOUR},"
         f" judged over {MIN_SPAN_S / 60:.0f} min or more; {span / 60:.1f} min here)"),
        (True, f"the prediction log grows {predictions:.1f} MiB/h: about"
               f" {predictions * 24 * RETENTION_DAYS / 1024:.1f} GiB at its {RETENTION_DAYS:.0f}"
               " days' retention"),
    ]  # fmt: skip
    spool = sizes[-1][1].get("predictions-spool", 0)
    found.append((spool < 2**20, f"the upload spool holds {spool} bytes at the end"))
    return found


@dataclass(frozen=True)
class Failure:
    """A request that failed, and whether the design allows it."""

    time: float
    cause: str
    variant: str
    allowed_by: str
    """The window or allowance it fell in; empty when none."""
    detail: str = ""


def classify_failures(
    failures: Sequence[tuple[float, float, str, str, str]],
    windows: Sequence[tuple[float, float, str]],
    own_errors: Sequence[tuple[float, float]],
) -> list[Failure]:
    """Name the allowance each failed request (sent, done, cause, variant, detail) fell in.

    A failure is allowed when it was sent or answered inside a window (a router restart), or
    when it is an error answer (4xx or 5xx) from the canary while a model that fails rows by
    design was
    being judged (`own_errors`: its rollouts' start and end).
    """
    classified = []
    for sent, done, cause, variant, detail in failures:
        allowed = next((why for start, end, why in windows if sent <= end and done >= start), "")
        judged = any(start <= sent <= end for start, end in own_errors)
        if not allowed and variant == "canary" and cause.startswith("http ") and judged:
            allowed = "canary judged: a model that fails rows by design"
        classified.append(Failure(sent, cause, variant, allowed, detail))
    return classified


@dataclass(frozen=True)
class Verdict:
    """One rollout: its model's truth, what the judge said, and whether that was right."""

    name: str
    version: str
    expected: str
    status: str
    failed_gates: tuple[str, ...]
    expected_gates: tuple[str, ...]
    message: str = ""

    @property
    def failed_closed(self) -> bool:
        """Rolled back because its windows could not be read (a fault hid the metrics), no gate
        having failed: the design's choice (as Flagger counts a failed metric query), not a
        judgement of the model."""
        return (self.status == "rolled_back" and not self.failed_gates
                and "metrics could not be read" in self.message)  # fmt: skip

    @property
    def right(self) -> bool:
        """The outcome expected and, for a rollback, by a gate that may rightly fail; or a
        rollout that failed closed."""
        if self.failed_closed:
            return True
        if self.status != self.expected:
            return False
        if self.expected != "rolled_back":
            return True
        named = {gate.split(":", 1)[0] for gate in self.failed_gates}
        return bool(named & set(self.expected_gates))


def label_outcomes(
    labels: Sequence[tuple[str, str, float]], disk_full: Sequence[tuple[float, float]]
) -> dict[str, Any]:
    """Count labels (state, reason, answered time) by end; a refusal is explained when its
    request was answered while the prediction log's disk was full (its record was dropped)."""
    counts: dict[str, int] = defaultdict(int)
    unexplained: list[str] = []
    for state, reason, answered in labels:
        counts[state] += 1
        if state == "refused":
            if reason.startswith("404") and any(s - 1 <= answered <= e + 1 for s, e in disk_full):
                counts["refused: record dropped, disk full"] += 1
            else:
                unexplained.append(reason)
        elif state != "joined":
            unexplained.append(f"still {state}")
    return {"counts": dict(counts), "unexplained": unexplained[:20],
            "unexplained_count": len(unexplained)}  # fmt: skip


@dataclass
class Checks:
    """What must hold, each with what was found."""

    failed: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)

    def expect(self, holds: bool, what: str) -> None:
        """Record `what` as held or failed."""
        (self.held if holds else self.failed).append(what)


def judge_run(
    failures: Sequence[Failure],
    verdicts: Sequence[Verdict],
    labels: dict[str, Any],
    found_slopes: Sequence[Slope],
    folders_ok: Sequence[tuple[bool, str]],
    left_running: Sequence[int],
    unfinished_faults: Sequence[str],
) -> Checks:
    """Every check of the run."""
    checks = Checks()
    outside = [f for f in failures if not f.allowed_by]
    checks.expect(not outside, f"{len(outside)} failed requests outside the allowed windows"
                  + (f": {[asdict(f) for f in outside[:10]]}" if outside else ""))  # fmt: skip
    wrong = [v for v in verdicts if not v.right]
    checks.expect(bool(verdicts) and not wrong, f"{len(verdicts) - len(wrong)} of"
                  f" {len(verdicts)} verdicts right" + (f"; wrong: {[asdict(v) for v in wrong]}"
                                                         if wrong else ""))  # fmt: skip
    checks.expect(labels["unexplained_count"] == 0,
                  f"labels: {labels['counts']}; unexplained: {labels['unexplained']}")  # fmt: skip
    growing = [s for s in found_slopes if s.grows]
    judged = sum(1 for s in found_slopes if s.judged)
    checks.expect(not growing, f"{judged} slopes judged, {len(growing)} past their bound"
                  + (f": {[asdict(s) for s in growing]}" if growing else ""))  # fmt: skip
    for ok, what in folders_ok:
        checks.expect(ok, what)
    checks.expect(not left_running, f"processes left running: {list(left_running)}")
    checks.expect(not unfinished_faults, f"faults not carried out: {list(unfinished_faults)}")
    return checks
