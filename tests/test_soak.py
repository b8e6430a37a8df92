"""The soak and chaos run (bench/soak.py): its arithmetic, and a short run of the harness.

The short run is the hour-long one with other numbers: `mlcanary up` on loopback under
traffic and late labels, a rollout of each kind of known model, each fault once; it must pass
every check the long one makes (a slope is judged only over 15 minutes, so here it is shown).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.soaking.report import (
    MAX_RSS_MIB_PER_HOUR,
    MIN_SPAN_S,
    WARM_UP_S,
    Verdict,
    classify_failures,
    folder_checks,
    label_outcomes,
    slopes,
    theil_sen_per_hour,
)
from bench.soaking.sampling import ProcessSample, role_of

ROOT = Path(__file__).resolve().parent.parent
SHORT_MINUTES = 6


def _series(pid: int, minutes: float, rss: list[float]) -> list[ProcessSample]:
    step = minutes * 60 / (len(rss) - 1)
    return [ProcessSample(i * step, pid, "router", value, 20, 4, 3) for i, value in enumerate(rss)]


def test_theil_sen_finds_a_leak_and_shrugs_off_a_spike() -> None:
    times = [float(t) for t in range(0, 3600, 10)]
    leak = [100 + 10 * t / 3600 for t in times]  # 10 MiB an hour
    assert theil_sen_per_hour(times, leak) == pytest.approx(10.0)
    spiky = [100.0] * len(times)
    spiky[len(times) // 2] = 500.0  # one garbage-collection-sized bump
    spiky[-1] = 400.0
    assert theil_sen_per_hour(times, spiky) == pytest.approx(0.0)
    assert theil_sen_per_hour([5.0], [1.0]) == 0.0


def test_slopes_leave_out_warm_up_and_judge_only_long_series() -> None:
    # Memory grows fast for the warm-up, then stays: no growth is judged.
    warm_up_points = int(WARM_UP_S / 10)
    rss = [50 + i for i in range(warm_up_points)] + [200.0] * 200
    found = {s.figure: s for s in slopes(_series(7, (len(rss) - 1) / 6, rss))}
    assert found["rss_mib"].judged and not found["rss_mib"].grows
    # A leak past the bound after warm-up, long enough to judge: it grows.
    leaking = [100 + 2 * MAX_RSS_MIB_PER_HOUR * i / 360 for i in range(400)]
    found = {s.figure: s for s in slopes(_series(8, 399 / 6, leaking))}
    assert found["rss_mib"].grows
    # The same leak over a span shorter than MIN_SPAN_S is shown, not judged.
    short = leaking[: int((WARM_UP_S + MIN_SPAN_S / 2) / 10)]
    found = {s.figure: s for s in slopes(_series(9, (len(short) - 1) / 6, short))}
    assert not found["rss_mib"].judged and not found["rss_mib"].grows
    assert found["rss_mib"].per_hour == pytest.approx(2 * MAX_RSS_MIB_PER_HOUR, rel=0.01)


def test_failures_are_allowed_only_inside_their_windows() -> None:
    windows = [(100.0, 110.0, "router restart")]
    failing_model_judged = [(200.0, 260.0)]
    found = classify_failures(
        [
            (99.0, 100.5, "disconnected", "", ""),  # answered inside the restart window
            (105.0, 105.0, "refused", "", ""),
            (111.0, 111.5, "refused", "", ""),  # after the router answered again: a defect
            (210.0, 210.1, "http 500", "canary", ""),  # the failing model, being judged
            (210.0, 210.1, "http 500", "stable", ""),  # stable failing: a defect
            (270.0, 270.1, "http 500", "canary", ""),  # after that rollout ended: a defect
            (220.0, 220.1, "timeout", "canary", ""),  # not an error answer of the model's own
        ],
        windows,
        failing_model_judged,
    )
    assert [bool(f.allowed_by) for f in found] == [True, True, False, True, False, False, False]


def test_a_verdict_is_right_by_its_outcome_and_for_a_rollback_its_gate() -> None:
    def verdict(expected: str, status: str, failed: tuple[str, ...]) -> Verdict:
        return Verdict("m", "3", expected, status, failed, ("prediction_psi",))

    assert verdict("promoted", "promoted", ()).right
    assert verdict("rolled_back", "rolled_back", ("prediction_psi:score",)).right
    assert not verdict("rolled_back", "rolled_back", ("error_rate",)).right  # the wrong reason
    assert not verdict("rolled_back", "promoted", ()).right
    assert not verdict("promoted", "deploy refused: 409", ()).right
    closed = Verdict("twin", "2", "promoted", "rolled_back", (), (),
                     "failed checks: metrics could not be read")  # fmt: skip
    assert closed.failed_closed and closed.right  # the router restarting twice: fails closed
    assert not verdict("promoted", "rolled_back", ("p99_ratio",)).right


def test_labels_refused_are_explained_only_by_a_full_disk() -> None:
    disk_full = [(100.0, 160.0)]
    found = label_outcomes(
        [
            ("joined", "", 50.0),
            ("refused", "404 not in the prediction log", 120.0),
            ("refused", "404 not in the prediction log", 300.0),
            ("refused", "400 [0].label is not a number", 120.0),
            ("waiting", "", 130.0),
        ],
        disk_full,
    )
    assert found["counts"]["joined"] == 1
    assert found["counts"]["refused: record dropped, disk full"] == 1
    assert found["unexplained_count"] == 3


def test_folder_checks_judge_the_logs_growth_after_warm_up() -> None:
    start, hour = 1000.0, 3600.0
    steady = [(start + t, {"logs": 2**20, "predictions": int(t * 10_000)})
              for t in range(0, int(hour), 10)]  # fmt: skip
    assert all(ok for ok, _ in folder_checks(steady))
    growing = [(at, {**sized, "logs": int((at - start) * 2000)}) for at, sized in steady]
    ok, what = folder_checks(growing)[0]
    assert not ok and "logs grow" in what  # 7 MiB an hour: a line per request
    assert not folder_checks([])[0][0]


def test_processes_are_named_by_their_part() -> None:
    assert role_of("python -m mlcanary serve-model models:/M/12 --host h --port 1 ") == (
        "model server v12"
    )
    assert role_of("python -m mlcanary router --config r.yaml") == "router"
    assert role_of("python -m mlcanary controller --config r.yaml") == "controller"


@pytest.mark.slow
@pytest.mark.timeout(SHORT_MINUTES * 60 + 900)  # set-up, six minutes, the last rollout, labels
@pytest.mark.xfail(
    strict=True, raises=AssertionError,
    reason="a defect the soak found, open in issue 32: a model that raises on a fifth of its"
    " rows answers 400 (as `mlflow models serve` does: MLflow answers BAD_REQUEST for any error"
    " in predict), which the error gates do not count (5xx only), so it is promoted and then"
    " fails a fifth of the requests as stable",
)  # fmt: skip
def test_a_short_soak_passes_every_check(tmp_path: Path) -> None:
    """Six minutes of `mlcanary up` with each fault once: no request lost outside the
    router's restart, every verdict right, every label ended, nothing left running."""
    out = tmp_path / "report"
    done = subprocess.run(
        [sys.executable, "bench/soak.py", "--short", "--minutes", str(SHORT_MINUTES),
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=SHORT_MINUTES * 60 + 900,
    )  # fmt: skip
    summary_path = out / "summary.json"
    if not summary_path.exists():  # the harness broke: a failure, never the expected one
        pytest.fail(done.stdout[-3000:] + done.stderr[-3000:])
    summary = json.loads(summary_path.read_text())
    others = _not_owed_to_the_400s(summary)
    if others:  # anything but the known defect fails the test, expected failure or not
        pytest.fail(json.dumps(others, indent=1))
    assert done.returncode == 0, json.dumps(summary["checks"], indent=1) + done.stderr[-3000:]
    assert not summary["checks"]["failed"]
    names = {fault["name"] for fault in summary["faults"]}
    assert {"canary killed", "router restart", "controller killed", "invalid routing file",
            "labels paused", "MLflow stopped"} <= names, names  # fmt: skip
    kinds = {verdict["name"] for verdict in summary["verdicts"]}
    assert len(kinds) >= 3, summary["verdicts"]
    assert summary["traffic"]["requests"]["sent"] > 0
    assert summary["labels"]["counts"].get("joined", 0) > 0
    assert (out / "README.md").exists() and (out / "processes.png").exists()


def _not_owed_to_the_400s(summary: dict[str, Any]) -> list[str]:
    """The failed checks that the open defect (the failing model's 400s promoted) does not
    explain: failed requests other than its 400s as stable, wrong verdicts of other models."""
    wrong = {v["name"] for v in summary["verdicts"] if not v["right"]}
    its_400s = all(f["cause"] == "http 400" and f["variant"] == "stable"
                   for f in summary["failures_outside"])  # fmt: skip
    return [
        check for check in summary["checks"]["failed"]
        if not (("failed requests outside" in check and its_400s)
                or ("verdicts right" in check and wrong <= {"failing"}))
    ]  # fmt: skip
