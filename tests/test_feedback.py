"""Late labels for real: a router logs answers of real model servers, labels come back through
the router's /feedback, the controller joins them by request id and reports quality."""

from __future__ import annotations

import csv
import json
import math
import statistics
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.files import write_atomically
from common.predictionlog import read_predictions
from common.settings import EXPERIMENT_NAME, RegistrySettings
from controller.quality import LabelledRow, Quality
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


def _predict(system: System, row: dict[Any, Any], own_id: str = "") -> tuple[str, Any]:
    """Send one row through the router (with the client's `own_id`); return the answer's
    request id and prediction."""
    body = json.dumps({"dataframe_records": [row]}).encode()
    own = {"X-Request-Id": own_id} if own_id else {}
    request = urllib.request.Request(
        f"{system.router_url}/invocations", data=body,
        headers={"Content-Type": "application/json", **own},
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


def _raw_feedback(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    """POST bytes as they are (a JSON encoder would refuse to write NaN or 1e999)."""
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_no_label_can_take_the_controller_down_or_be_half_kept(system: System) -> None:
    """1e999, a 400-digit number, NaN and 1e308: a clear 400 naming the field, nothing written,
    the controller alive, its answers standard JSON; the labels token posts labels and nothing
    else; a client's own X-Request-Id joins nothing; a restart is clean."""
    rows = load_dataset(DEFAULT_PATH).head(3)[list(FEATURES)].to_dict(orient="records")
    ids = [_predict(system, row, own_id="order-17")[0] for row in rows]  # one id, three times
    assert len(set(ids)) == 3
    log = system.state / "predictions"
    wait_until(lambda: len(list(read_predictions(log))) == 3, "every answer logged")
    labels = system.state / "labels.jsonl"
    bearer = {"Content-Type": "application/json", "Authorization": f"Bearer {system.token}"}
    for text in ("1e999", "1" * 400, "NaN", "-Infinity", "1e308", "1e151", '"' + "x" * 1001 + '"'):
        body = b'[{"request_id": "%s", "label": 60.0}, {"request_id": "%s", "label": %s}]' % (
            ids[0].encode(), ids[1].encode(), text.encode(),
        )  # fmt: skip
        code, answer = _raw_feedback(f"{system.router_url}/feedback", body, bearer)
        assert code == 400 and "[1].label" in answer["message"], (text, code, answer)
        assert not labels.exists() or labels.read_bytes() == b"", text
    labels_token = (system.state / "labels-token").read_text().strip()
    assert labels_token != system.token
    code, answer = call_json(
        f"{system.router_url}/feedback", "POST", {"request_id": ids[0], "label": 1e150},
        labels_token,
    )  # fmt: skip
    assert code == 200 and answer["accepted"] == 1, answer
    rmse = answer["quality"]["stable"]["1"]["rmse"]
    assert rmse is not None and math.isfinite(rmse)
    for method, path, body in (("GET", "/api/status", None), ("POST", "/api/rollback", {})):
        code, answer = system.admin(method, path, body, labels_token)
        assert code == 403 and "only post labels" in answer["message"], (path, answer)
    with urllib.request.urlopen(f"{system.controller_url}/api/overview", timeout=30) as answer:
        json.loads(answer.read(), parse_constant=_refuse_constant)  # standard JSON only
    own = {"request_id": "order-17", "label": 1.0}
    code, answer = call_json(f"{system.router_url}/feedback", "POST", own, labels_token)
    assert code == 404 and "order-17" in answer["message"]
    _, metrics = _metrics(system.controller_url)
    assert 'mlcanary_labels_refused_total{reason="invalid"} 7.0' in metrics
    assert 'mlcanary_labels_refused_total{reason="unknown"} 1.0' in metrics
    system.processes[0].kill()
    system.processes[0].wait(timeout=30)
    with labels.open("ab") as handle:  # a line an older controller might have kept
        handle.write(b'{"request_id": "%s", "label": 1e999}\n{"torn\n' % ids[2].encode())
    system.restart_controller()
    _, metrics = _metrics(system.controller_url)
    assert "mlcanary_labels_skipped_total 2.0" in metrics
    code, status = system.admin("GET", "/api/status")
    assert code == 200 and status["quality"]["stable"]["1"]["labels"] == 1


def test_an_anonymous_oversized_batch_is_refused_before_it_is_read(system: System) -> None:
    """No token: 401 before a byte of the body is read; over the bound: 413 by its length."""
    from contracts.labels import MAX_LABELS_BYTES

    size = MAX_LABELS_BYTES + 1
    for headers, status in (
        ({"Content-Length": str(size)}, 401),
        ({"Content-Length": str(size), "Authorization": f"Bearer {system.token}"}, 413),
    ):  # fmt: skip
        import socket
        from urllib.parse import urlparse

        address = urlparse(system.router_url)
        with socket.create_connection((address.hostname, address.port), timeout=30) as client:
            head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
            client.sendall(f"POST /feedback HTTP/1.1\r\nHost: r\r\n{head}\r\n".encode())
            client.sendall(b"[" * 1000)  # a start only: the answer must not wait for the rest
            line = client.makefile("rb").readline()
        assert line.split()[1] == str(status).encode(), (headers, line)
    _, metrics = _metrics(system.router_url)
    assert 'mlcanary_client_limits_total{limit="labels_size"} 1.0' in metrics


def _refuse_constant(name: str) -> Any:
    raise AssertionError(f"not standard JSON: {name}")


def _metrics(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as answer:
        return answer.status, answer.read().decode()
