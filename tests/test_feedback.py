"""Late labels for real: a router logs answers of real model servers, labels come back through
the router's /feedback, the controller joins them by request id and reports quality."""

from __future__ import annotations

import csv
import json
import statistics
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.predictionlog import read_predictions
from tests.conftest import TrainedRegistry
from tests.helpers import run_mlcanary, wait_until
from tests.systems import System, call_json, copied_registry, running_system
from training.dataset import DEFAULT_PATH, FEATURES, TARGET, load_dataset

COUNT = 20


@pytest.fixture
def system(trained_registry: TrainedRegistry, tmp_path: Path) -> Iterator[System]:
    folder = tmp_path / "registry"
    folder.mkdir()
    with running_system(copied_registry(trained_registry.settings, folder), tmp_path) as built:
        yield built


def _predict(system: System, row: dict[str, Any]) -> tuple[str, float]:
    body = json.dumps({"dataframe_records": [row]}).encode()
    request = urllib.request.Request(
        f"{system.router_url}/invocations", data=body,
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.headers["X-Request-Id"], float(json.loads(answer.read())["predictions"][0])


def test_labels_join_logged_predictions_and_give_quality_per_variant(
    system: System, tmp_path: Path
) -> None:
    frame = load_dataset(DEFAULT_PATH).head(COUNT)
    rows = frame[list(FEATURES)].to_dict(orient="records")
    truths = frame[TARGET].astype(float).tolist()
    answered = [_predict(system, row) for row in rows]
    ids = [request_id for request_id, _ in answered]
    log = system.state / "predictions"
    wait_until(lambda: len(list(read_predictions(log))) == COUNT, "every answer logged")

    def feedback(body: Any, token: str | None = None) -> tuple[int, Any]:
        return call_json(f"{system.router_url}/feedback", "POST", body, token or system.token)

    first = [{"request_id": i, "label": t} for i, t in zip(ids[:10], truths[:10], strict=True)]
    code, taken = feedback(first)
    assert code == 200 and taken["accepted"] == 10, taken
    errors = [p - t for (_, p), t in zip(answered[:10], truths[:10], strict=True)]
    quality = taken["quality"]["stable"]["1"]
    assert quality["labels"] == 10
    assert quality["mae"] == pytest.approx(statistics.fmean(abs(e) for e in errors), rel=1e-9)
    assert quality["rmse"] == pytest.approx(statistics.fmean(e * e for e in errors) ** 0.5)
    assert quality["bias"] == pytest.approx(statistics.fmean(errors), rel=1e-9)

    refused = {
        "unknown": (feedback([{"request_id": "never-sent", "label": 1.0}]), 404, "never-sent"),
        "relabel": (feedback([first[0]]), 409, ids[0]),
        "twice": (feedback([{"request_id": ids[10], "label": 1.0}] * 2), 409, ids[10]),
        "mixed": (
            feedback([{"request_id": ids[10], "label": 1.0}, {"request_id": "x", "label": 1.0}]),
            404, "x",
        ),
        "type": (feedback({"request_id": ids[10], "label": None}), 400, "(body).label"),
        "id type": (feedback([{"request_id": 5, "label": 1.0}]), 400, "[0].request_id"),
        "shape": (feedback({"request_id": ids[10]}), 400, "request_id and label"),
        "token": (feedback(first[:1], token="wrong"), 403, "not valid"),  # noqa: S106
    }  # fmt: skip
    for case, ((code, answer), status, named) in refused.items():
        assert code == status and named in answer["message"], (case, code, answer)
    code, status = system.admin("GET", "/api/status")
    assert status["quality"]["stable"]["1"]["labels"] == 10  # the refused batches kept nothing

    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["request_id", "label"])
        writer.writerows(zip(ids[10:], truths[10:], strict=True))
    sent = system.cli("feedback", str(labels))
    assert sent.returncode == 0 and "10 labels taken" in sent.stdout, sent.stderr
    shown = system.cli("status").stdout
    assert "quality  stable v1: labels 20, mae" in shown
    with urllib.request.urlopen(f"{system.controller_url}/metrics", timeout=10) as answer:
        metrics = answer.read().decode()
    assert 'mlcanary_quality{measure="labels",variant="stable",version="1"} 20.0' in metrics

    system.restart_controller_gracefully()
    code, status = system.admin("GET", "/api/status")
    assert status["quality"]["stable"]["1"]["labels"] == 20  # read again from the two logs

    demo = run_mlcanary("predict", "--count", "5", "--router", system.router_url, "--labels",
                        "--label-delay", "0", state=system.state)  # fmt: skip
    assert demo.returncode == 0 and "5 labels sent" in demo.stderr, demo.stderr
    code, status = system.admin("GET", "/api/status")
    assert status["quality"]["stable"]["1"]["labels"] == 25
    ids += [r.request_id for r in read_predictions(log)][COUNT:]

    exported = tmp_path / "predictions.csv"
    done = run_mlcanary("predictions", "export", str(exported), state=system.state)
    assert done.returncode == 0, done.stderr
    with exported.open() as handle:
        assert sorted(row["request_id"] for row in csv.DictReader(handle)) == sorted(ids)
