"""Training and registration against a real sqlite MLflow registry in a temp folder."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.types import DataType

from common.settings import RegistrySettings
from common.supervision import ChildProcess, child_environment, wait_until_healthy
from tests.conftest import TrainedRegistry
from tests.helpers import free_port, point_mlflow_at, registry_snapshot
from training.dataset import DEFAULT_PATH, DEFAULT_SEED, FEATURES, TARGET, load_dataset
from training.errors import TrainingError
from training.pipelines import ModelKind
from training.train import TrainOptions, evaluate, split_dataset, train_and_register

pytestmark = pytest.mark.slow  # real MLflow, model servers or whole systems


def test_registered_model_reproduces_its_logged_metrics(trained_registry: TrainedRegistry) -> None:
    """Loaded back from the registry, each version scores the held-out rows as logged."""
    point_mlflow_at(trained_registry.settings)
    split = split_dataset(load_dataset(DEFAULT_PATH), test_size=0.2, seed=42)
    client = MlflowClient(trained_registry.settings.tracking_uri)
    for result in (trained_registry.champion, trained_registry.challenger):
        model = mlflow.sklearn.load_model(result.model_uri)
        logged = client.get_run(result.run_id).data.metrics
        measured = evaluate(model, split.test_x, split.test_y)
        assert set(logged) >= {"rmse", "mae", "r2"}
        for name in ("rmse", "mae", "r2"):
            assert measured[name] == pytest.approx(logged[name], abs=1e-9)
        assert logged["r2"] > 0.5


def test_version_tags_carry_kind_and_metrics(trained_registry: TrainedRegistry) -> None:
    """Each registered version is tagged with its model kind and held-out metrics."""
    client = MlflowClient(trained_registry.settings.tracking_uri)
    champion = trained_registry.champion
    version = client.get_model_version(champion.model_name, champion.version)
    assert version.tags["model_kind"] == "linear"
    assert float(version.tags["r2"]) == pytest.approx(champion.metrics["r2"], abs=1e-6)
    assert version.run_id == champion.run_id


def test_signature_lists_the_features_only_as_doubles(trained_registry: TrainedRegistry) -> None:
    """The input schema is the four features (never student_id), all declared double."""
    point_mlflow_at(trained_registry.settings)
    info = mlflow.models.get_model_info(trained_registry.champion.model_uri)
    inputs = info.signature.inputs
    assert inputs.input_names() == list(FEATURES)
    assert all(kind == DataType.double for kind in inputs.input_types())


def test_run_logs_parameters_dataset_and_input_example(trained_registry: TrainedRegistry) -> None:
    """The run holds the parameters, the training dataset and an input example of features."""
    point_mlflow_at(trained_registry.settings)
    run = MlflowClient(trained_registry.settings.tracking_uri).get_run(
        trained_registry.challenger.run_id
    )
    assert run.data.params["model_kind"] == "random_forest"
    assert run.data.params["seed"] == "42"
    assert run.data.params["n_estimators"] == "100"
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "student_exam_scores"
    assert {tag.value for tag in dataset_input.tags} == {"training"}
    assert TARGET in dataset_input.dataset.profile or dataset_input.dataset.digest
    example = mlflow.models.Model.load(trained_registry.challenger.model_uri).load_input_example()
    assert list(example.columns) == list(FEATURES)


def test_a_served_model_accepts_whole_and_decimal_numbers(
    trained_registry: TrainedRegistry,
) -> None:
    """`mlflow models serve` answers previous_scores sent as 85 and as 85.0 alike."""
    port = free_port()
    state = trained_registry.state
    server = ChildProcess(
        "mlflow models serve",
        [
            *("mlflow", "models", "serve", "-m", trained_registry.champion.model_uri),
            *("--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)),
        ],
        state / "logs" / "serve.log",
        environment=child_environment(
            {"MLFLOW_TRACKING_URI": trained_registry.settings.tracking_uri}
        ),
    )
    server.start()
    try:
        asyncio.run(wait_until_healthy(server, f"http://127.0.0.1:{port}/ping", 90))
        answers = []
        for previous in (85, 85.0):
            row = {"hours_studied": 6, "sleep_hours": 7.5, "attendance_percent": 90}
            body = json.dumps({"dataframe_records": [row | {"previous_scores": previous}]})
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations",
                data=body.encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=30) as answer:
                answers.append(json.loads(answer.read())["predictions"][0])
    finally:
        server.stop()
    assert answers[0] == pytest.approx(answers[1], abs=1e-12)
    assert 15 < answers[0] < 55


def test_aliases_follow_champion_then_challenger(empty_registry: RegistrySettings) -> None:
    """First version: champion; later: challenger (moving); --alias and no alias are honoured."""
    linear = ModelKind.linear
    first = train_and_register(TrainOptions(kind=linear), empty_registry)
    second = train_and_register(TrainOptions(kind=linear), empty_registry)
    third = train_and_register(TrainOptions(kind=linear), empty_registry)
    named = train_and_register(TrainOptions(kind=linear, alias="shadow"), empty_registry)
    bare = train_and_register(TrainOptions(kind=linear, alias=""), empty_registry)
    assert [r.alias for r in (first, second, third, named, bare)] == [
        "champion",
        "challenger",
        "challenger",
        "shadow",
        None,
    ]
    versions, runs = registry_snapshot(empty_registry)
    assert versions == [
        ("1", ["champion"]),
        ("2", []),
        ("3", ["challenger"]),
        ("4", ["shadow"]),
        ("5", []),
    ]
    assert runs == 5


def test_the_same_seed_trains_the_same_model(empty_registry: RegistrySettings) -> None:
    """Two trainings with one seed give identical metrics: the split and model are seeded."""
    options = TrainOptions(kind=ModelKind.random_forest)
    first = train_and_register(options, empty_registry)
    second = train_and_register(options, empty_registry)
    assert first.metrics == second.metrics
    assert np.isfinite(list(first.metrics.values())).all()


def test_a_failing_alias_leaves_no_version_behind(empty_registry: RegistrySettings) -> None:
    """An alias MLflow refuses rolls the new version back: nothing half-registered."""
    train_and_register(TrainOptions(kind=ModelKind.linear), empty_registry)
    before, _ = registry_snapshot(empty_registry)
    with pytest.raises(TrainingError, match="registry error"):
        train_and_register(TrainOptions(kind=ModelKind.linear, alias="v3"), empty_registry)
    after, _ = registry_snapshot(empty_registry)
    assert after == before


def test_permuted_labels_give_the_right_distribution_on_the_wrong_rows(
    empty_registry: RegistrySettings,
) -> None:
    """An unpruned tree answers its training rows' scores exactly; trained on scores permuted
    across the rows, it answers the same multiset of scores, on the wrong rows."""
    import mlflow.pyfunc

    frame = load_dataset(DEFAULT_PATH)
    split = split_dataset(frame, 0.2, DEFAULT_SEED)
    answers = []
    for permute in (False, True):
        options = TrainOptions(kind=ModelKind.decision_tree, permute_labels=permute, alias="")
        result = train_and_register(options, empty_registry)
        point_mlflow_at(empty_registry)
        model = mlflow.pyfunc.load_model(result.model_uri)
        answers.append(np.asarray(model.predict(split.train_x)))
    truth = split.train_y.to_numpy(dtype=float)
    assert np.allclose(answers[0], truth)
    assert np.allclose(np.sort(answers[1]), np.sort(truth))
    assert np.mean(np.isclose(answers[1], truth)) < 0.2
