"""The controller's memory and disk for labels stay bounded: answers held compactly, oldest
forgotten past a limit, the log streamed, old days and old labels removed."""

from __future__ import annotations

import json
import os
import time
import tracemalloc
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from common.predictionlog import expire_days, file_for
from controller import answers as answers_module
from controller.answers import LoggedAnswers
from controller.errors import LabelsRefused
from controller.feedback import LabelBook

BODY = {"dataframe_records": [{"text": "x" * 2000}]}  # a 2 KiB request body


def _write_log(folder: Path, count: int, start: int = 0, at: float | None = None) -> None:
    """Append `count` records (ids r<start>...) to one router's file, 2 KiB bodies each."""
    at = time.time() if at is None else at
    path = file_for(folder, "router-1", at)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as handle:
        for number in range(start, start + count):
            answer = {"predictions": [number / 10]}
            record = {"request_id": f"r{number}", "time": at, "variant": "stable",
                      "version": "1", "inputs": BODY, "answer": answer}  # fmt: skip
            handle.write(json.dumps(record).encode() + b"\n")


def test_answers_past_the_limit_are_forgotten_oldest_first(tmp_path: Path) -> None:
    log = tmp_path / "predictions"
    _write_log(log, 2_500)
    book = LabelBook(log, tmp_path / "labels.jsonl", CollectorRegistry(), max_answers=1_000)
    memory = book.memory()
    assert 900 <= memory["answers_held"] <= 1_000 and memory["answers_limit"] == 1_000
    assert memory["answers_forgotten"] == 2_500 - memory["answers_held"]
    assert book.answers.answer("r2499") == ("stable", "1", [249.9])
    with pytest.raises(LabelsRefused) as refused:
        book.take({"request_id": "r0", "label": 1.0})
    assert refused.value.status == 404 and "newest 1000 answers are held" in str(refused.value)
    assert book.take({"request_id": "r2400", "label": 240.0})["accepted"] == 1
    _write_log(log, 1_000, start=2_500)  # r2400 is forgotten with the next trim
    book.read_log()
    assert book.answers.answer("r2400") is None and "r2400" not in book.labelled
    forgotten = book.registry.get_sample_value("mlcanary_logged_answers_forgotten_total")  # type: ignore[union-attr]
    assert forgotten == book.answers.forgotten


def test_the_log_is_read_in_chunks_lines_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks of 100 bytes split every line: each is still taken once; a torn last line waits."""
    monkeypatch.setattr(answers_module, "CHUNK_BYTES", 100)
    log = tmp_path / "predictions"
    _write_log(log, 30)
    path = next(log.glob("*/*.jsonl"))
    with path.open("ab") as handle:
        handle.write(b'{"request_id": "torn", "ti')
    held = LoggedAnswers(log)
    held.read_new()
    assert sorted(held.served) == sorted(f"r{n}" for n in range(30))
    with path.open("ab") as handle:
        handle.write(b'me": 1, "variant": "stable", "version": "1", "inputs": {},'
                     b' "answer": {"predictions": [7]}}\n')  # fmt: skip
    held.read_new()
    assert held.answer("torn") == ("stable", "1", [7])


def test_held_answers_cost_far_less_than_their_bodies(tmp_path: Path) -> None:
    """20,000 logged answers with 2 KiB bodies (40 MB of log) held in under 6 MB: what a label
    is judged against, never the inputs. (The million, in a whole controller: bench/.)"""
    log = tmp_path / "predictions"
    _write_log(log, 20_000)
    tracemalloc.start()
    try:
        held = LoggedAnswers(log)
        held.read_new()
        size, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(held.served) == 20_000
    assert size < 6 * 1024 * 1024, size  # about 230 bytes an answer


def test_old_days_and_old_labels_are_removed(tmp_path: Path) -> None:
    log = tmp_path / "predictions"
    now = time.time()
    _write_log(log, 3, at=now - 40 * 86_400)
    _write_log(log, 3, start=3, at=now)
    (log / "not-a-day").mkdir()
    removed = expire_days(log, 30, now)
    assert len(removed) == 1 and sorted(p.name for p in log.iterdir())[-1] == "not-a-day"
    assert len(list(log.glob("*/*.jsonl"))) == 1
    labels = tmp_path / "labels.jsonl"
    lines = [
        {"request_id": "r3", "label": 1.0, "time": now - 100 * 86_400},
        {"request_id": "r4", "label": 1.0, "time": now - 86_400},
        {"request_id": "r5", "label": 1.0},  # stored before labels had times: kept
    ]
    labels.write_bytes(b"".join(json.dumps(line).encode() + b"\n" for line in lines))
    os.chmod(labels, 0o600)
    book = LabelBook(log, labels, CollectorRegistry(), retention_days=90)
    assert book.labelled == {"r4", "r5"}
    assert [json.loads(line)["request_id"] for line in labels.read_bytes().splitlines()] == [
        "r4", "r5",
    ]  # fmt: skip
    rows, cursor = book.rows_since(0)
    assert len(rows) == 2 and cursor == 2 and book.rows_since(cursor) == ([], 2)


def test_recent_errors_are_a_versions_newest_numeric_rows(tmp_path: Path) -> None:
    """What a rollout starts its labels bound from: stable's errors labelled before it."""
    log = tmp_path / "predictions"
    _write_log(log, 5)  # predictions 0.0, 0.1, ..., 0.4 by stable v1
    book = LabelBook(log, tmp_path / "labels.jsonl", CollectorRegistry())
    book.take([{"request_id": f"r{n}", "label": 1.0} for n in range(5)])
    assert book.recent_errors("stable", "1") == pytest.approx([1.0, 0.9, 0.8, 0.7, 0.6])
    assert book.recent_errors("stable", "1", most=2) == pytest.approx([0.7, 0.6])
    assert book.recent_errors("stable", "2") == [] and book.recent_errors("canary", "1") == []
