"""Late labels for real: a router logs answers of real model servers, labels come back through
the router's /feedback, the controller joins them by request id and reports quality."""

from __future__ import annotations

import csv
import json
import math
import statistics
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.files import write_atomically
from common.predictionlog import read_predictions
from common.settings import EXPERIMENT_NAME, RegistrySettings
from controller.feedback import LabelledRow, Quality
from tests.conftest import TrainedRegistry
from tests.helpers import run_mlcanary, wait_until
from tests.systems import System, call_json, copied_registry, running_system
from training.dataset import DEFAULT_PATH, FEATURES, TARGET, load_dataset
from training.registry import connect, ensure_experiment, register_version
from training.train import serving_requirements, trusted_types

pytestmark = pytest.mark.slow  # real MLflow, model servers or whole systems

COUNT = 20


@pytest.fixture
def system(trained_registry: TrainedRegistry, tmp_path: Path) -> Iterator[System]:
    folder = tmp_path / "registry"
    folder.mkdir()
    with running_system(copied_registry(trained_registry.settings, folder), tmp_path) as built:
        yield built


def _predict(system: System, row: dict[Any, Any]) -> tuple[str, Any]:
    """Send one row through the router; return the answer's request id and prediction."""
    body = json.dumps({"dataframe_records": [row]}).encode()
    request = urllib.request.Request(
        f"{system.router_url}/invocations", data=body,
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.headers["X-Request-Id"], json.loads(answer.read())["predictions"][0]


def test_probabilities_give_accuracy_and_log_loss_and_nothing_else_is_taken_for_them() -> None:
    by_name = LabelledRow.of("stable", "1", {"cat": 0.7, "dog": 0.2, "eel": 0.1}, "dog")
    assert by_name.classes and by_name.error == 1.0
    assert by_name.log_loss == pytest.approx(-math.log(0.2))
    by_index = LabelledRow.of("stable", "1", [0.1, 0.9], 1)
    assert by_index.error == 0.0 and by_index.log_loss == pytest.approx(-math.log(0.9))
    certain = LabelledRow.of("stable", "1", [1.0, 0.0], 1)
    assert certain.log_loss == pytest.approx(-math.log(1e-15))  # clipped, as scikit-learn
    for not_probabilities, label in (
        ([3.2, 5.1], 1),  # two outputs of a regression
        ([0.5, 0.4], 0),  # does not add up to 1
        ({"score": 0.4, "weight": 0.6}, "dog"),  # names no such class
        ([0.3, 0.7], 2),  # no such index
    ):
        row = LabelledRow.of("stable", "1", not_probabilities, label)
        assert row.log_loss is None, not_probabilities
    quality = Quality()
    for row in (by_name, by_index, LabelledRow.of("stable", "1", "dog", "dog")):
        quality.add(row)
    shown = quality.to_json()
    assert shown["accuracy"] == pytest.approx(2 / 3)
    assert shown["log_loss"] == pytest.approx((-math.log(0.2) - math.log(0.9)) / 2)


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
    errors = [float(p) - t for (_, p), t in zip(answered[:10], truths[:10], strict=True)]
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


@pytest.fixture(scope="module")
def classifiers(
    trained_registry: TrainedRegistry, tmp_path_factory: pytest.TempPathFactory
) -> RegistrySettings:
    """v3 and v4: two classifiers of "above the median score" served as `predict_proba` (the
    model answers each row's probabilities of classes 0 and 1)."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    settings = copied_registry(trained_registry.settings, tmp_path_factory.mktemp("classifiers"))
    frame = load_dataset(DEFAULT_PATH)
    features = frame[list(FEATURES)]
    above = (frame[TARGET] > frame[TARGET].median()).astype(int)
    client = connect(settings)
    experiment = ensure_experiment(client, EXPERIMENT_NAME, settings.artifact_root)
    for estimator in (LogisticRegression(max_iter=1000), DecisionTreeClassifier(max_depth=2)):
        estimator.fit(features, above)
        with mlflow.start_run(experiment_id=experiment) as run:
            info = mlflow.sklearn.log_model(
                estimator, name="model", pyfunc_predict_fn="predict_proba",
                signature=infer_signature(features, estimator.predict_proba(features)),
                input_example=features.head(2), pip_requirements=serving_requirements(),
                skops_trusted_types=trusted_types(estimator),
            )  # fmt: skip
        register_version(client, settings.model_name, info, run.info.run_id, {}, None)
    return settings


def test_shadowed_requests_are_labelled_for_both_models_with_log_loss(
    classifiers: RegistrySettings, tmp_path: Path
) -> None:
    """Stable v3 answers, the canary v4 (weight 0) answers the shadow copies: one label per
    request gives both models' accuracy and log loss, as scikit-learn computes them from the
    logged probabilities."""
    from sklearn.metrics import accuracy_score, log_loss

    with running_system(classifiers, tmp_path, stable_version="3") as system:
        code, answer = system.admin("POST", "/api/deploy", {"version": "4", "weight": 0})
        assert code == 200, answer
        routing = system.state / "routing.yaml"
        document = yaml.safe_load(routing.read_text())
        document["shadow"] = {"percent": 100}
        write_atomically(routing, yaml.safe_dump(document).encode())
        in_step = lambda: all(  # noqa: E731
            seen["in_step"] for seen in system.admin("GET", "/api/status")[1]["routers"].values()
        )
        wait_until(in_step, "the router on the file with shadowing")

        frame = load_dataset(DEFAULT_PATH).head(COUNT)
        truths = (frame[TARGET] > load_dataset(DEFAULT_PATH)[TARGET].median()).astype(int)
        rows = frame[list(FEATURES)].to_dict(orient="records")
        ids = [_predict(system, row)[0] for row in rows]
        log = system.state / "predictions"
        records = lambda: list(read_predictions(log))  # noqa: E731
        wait_until(lambda: len(records()) == 2 * COUNT, "every answer and its shadow logged")
        answers = {(r.variant, r.request_id): r.predictions[0] for r in records()}
        assert {variant for variant, _ in answers} == {"stable", "shadow"}

        labels = [{"request_id": i, "label": int(t)} for i, t in zip(ids, truths, strict=True)]
        code, taken = call_json(f"{system.router_url}/feedback", "POST", labels, system.token)
        assert code == 200, taken
        for variant, version in (("stable", "3"), ("shadow", "4")):
            probabilities = [answers[(variant, i)] for i in ids]
            quality = taken["quality"][variant][version]
            assert quality["labels"] == COUNT
            assert quality["log_loss"] == pytest.approx(
                log_loss(truths, probabilities, labels=[0, 1]), rel=1e-9
            )
            chosen = [max(range(2), key=p.__getitem__) for p in probabilities]
            assert quality["accuracy"] == pytest.approx(accuracy_score(truths, chosen))
        assert "quality  shadow v4: labels 20" in system.cli("status").stdout
