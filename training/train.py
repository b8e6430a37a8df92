"""Train one model kind on the dataset, log it to MLflow and register a new version."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.settings import EXPERIMENT_NAME
from training.dataset import DEFAULT_PATH, DEFAULT_SEED, FEATURES, TARGET, load_dataset
from training.errors import TrainingError
from training.pipelines import ModelKind, build_pipeline, pipeline_params
from training.registry import (
    choose_alias,
    connect,
    ensure_experiment,
    register_version,
    versions_of,
)

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.models.model import ModelInfo
    from sklearn.pipeline import Pipeline

    from common.settings import RegistrySettings

MODEL_ARTIFACT = "model"
SERVING_REQUIREMENTS = ("mlflow", "scikit-learn", "numpy", "pandas", "scipy", "skops")


@dataclass(frozen=True)
class TrainOptions:
    """What to train and how to register it."""

    kind: ModelKind = ModelKind.random_forest
    data_path: Path = DEFAULT_PATH
    seed: int = DEFAULT_SEED
    test_size: float = 0.2
    alias: str | None = None
    """None: champion for the model's first version, challenger after; "": no alias."""
    permute_labels: bool = False
    """Train on the target permuted across the training rows (seeded): a model whose
    predictions have the right distribution on the wrong rows, which only labels can catch."""


@dataclass(frozen=True)
class TrainResult:
    """What `train_and_register` produced."""

    model_name: str
    version: str
    alias: str | None
    kind: ModelKind
    run_id: str
    model_uri: str
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True)
class Split:
    """Features and target, divided into the training part and the held-out part."""

    train_x: pd.DataFrame
    test_x: pd.DataFrame
    train_y: pd.Series
    test_y: pd.Series


def split_dataset(frame: pd.DataFrame, test_size: float, seed: int) -> Split:
    """Divide the dataset's features (never the id) and target, reproducibly for a seed."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_size < 1.0:
        raise TrainingError(f"test_size must be between 0 and 1, got {test_size}")
    features = frame[list(FEATURES)].astype("float64")
    train_x, test_x, train_y, test_y = train_test_split(
        features, frame[TARGET], test_size=test_size, random_state=seed
    )
    return Split(train_x, test_x, train_y, test_y)


def evaluate(pipeline: Pipeline, features: pd.DataFrame, target: pd.Series) -> dict[str, float]:
    """Return rmse, mae and r2 of the pipeline's predictions against `target`."""
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    predicted = pipeline.predict(features)
    mse = float(mean_squared_error(target, predicted))
    return {
        "rmse": mse**0.5,
        "mae": float(mean_absolute_error(target, predicted)),
        "r2": float(r2_score(target, predicted)),
    }


def serving_requirements() -> list[str]:
    """Pin the packages a served model needs to what is installed, so MLflow need not guess."""
    pins = []
    for package in SERVING_REQUIREMENTS:
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    return pins


def trusted_types(pipeline: Pipeline) -> list[str]:
    """Return the types skops would refuse to load from this pipeline, which we built."""
    import skops.io

    return list(skops.io.get_untrusted_types(data=skops.io.dumps(pipeline)))


def train_and_register(
    options: TrainOptions,
    settings: RegistrySettings,
    progress: Callable[[str], None] = lambda _step: None,
) -> TrainResult:
    """Train, evaluate, log and register one model; raise TrainingError on a fixable problem."""
    from mlflow.exceptions import MlflowException

    started = time.perf_counter()
    progress(f"Reading {options.data_path}")
    frame = load_dataset(options.data_path)
    split = split_dataset(frame, options.test_size, options.seed)
    progress(f"Connecting to {settings.tracking_uri}")
    try:
        client = connect(settings)
        had_versions = bool(versions_of(client, settings.model_name))
        alias = choose_alias(options.alias, had_versions)
        experiment_id = ensure_experiment(client, EXPERIMENT_NAME, settings.artifact_root)
        progress(f"Training {options.kind.value}")
        pipeline = build_pipeline(options.kind, options.seed)
        target = split.train_y
        if options.permute_labels:
            target = target.sample(frac=1.0, random_state=options.seed).set_axis(target.index)
        pipeline.fit(split.train_x, target)
        metrics = evaluate(pipeline, split.test_x, split.test_y)
        progress("Logging the run and the model")
        run_id, logged = _log_run(options, frame, split, pipeline, metrics, experiment_id)
        progress(f"Registering a version of {settings.model_name}")
        tags = {"model_kind": options.kind.value} | {k: f"{v:.6f}" for k, v in metrics.items()}
        registered = register_version(client, settings.model_name, logged, run_id, tags, alias)
    except MlflowException as error:
        raise TrainingError(f"registry error: {error.message}") from None
    return TrainResult(
        model_name=settings.model_name,
        version=str(registered.version),
        alias=alias,
        kind=options.kind,
        run_id=run_id,
        model_uri=f"models:/{settings.model_name}/{registered.version}",
        metrics=metrics,
        seconds=time.perf_counter() - started,
    )


def _log_run(
    options: TrainOptions,
    frame: pd.DataFrame,
    split: Split,
    pipeline: Pipeline,
    metrics: dict[str, float],
    experiment_id: str,
) -> tuple[str, ModelInfo]:
    """Log parameters, metrics, the dataset and the model in one run; return run id and model."""
    import mlflow
    import mlflow.sklearn
    from mlflow.data.pandas_dataset import from_pandas
    from mlflow.models import infer_signature

    signature = infer_signature(split.train_x, pipeline.predict(split.train_x))
    with warnings.catch_warnings():
        # mlflow 3.17 registers the local-file source class twice and warns of its own ambiguity.
        warnings.filterwarnings("ignore", "The specified dataset source", UserWarning)
        dataset = from_pandas(
            frame,
            source=str(options.data_path.resolve()),
            targets=TARGET,
            name=options.data_path.stem,
        )
    with mlflow.start_run(experiment_id=experiment_id, run_name=options.kind.value) as run:
        mlflow.log_input(dataset, context="training")
        mlflow.log_params(
            {
                "model_kind": options.kind.value,
                "permuted_labels": options.permute_labels,
                "seed": options.seed,
                "test_size": options.test_size,
                "train_rows": len(split.train_x),
                "test_rows": len(split.test_x),
                "features": ",".join(FEATURES),
                **pipeline_params(pipeline),
            }
        )
        mlflow.log_metrics(metrics)
        info = mlflow.sklearn.log_model(
            pipeline,
            name=MODEL_ARTIFACT,
            signature=signature,
            input_example=split.train_x.head(2),
            pip_requirements=serving_requirements(),
            skops_trusted_types=trusted_types(pipeline),
        )
    return run.info.run_id, info


def register_estimator(
    settings: RegistrySettings, estimator: Any, features: Any, alias: str | None = None
) -> str:
    """Log a fitted scikit-learn estimator and register it; return its version.

    For models trained outside `train_and_register` (a test's or a soak's model of known
    truth): the same requirements, signature and skops trust as the demo's models.
    """
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    client = connect(settings)
    experiment = ensure_experiment(client, EXPERIMENT_NAME, settings.artifact_root)
    with mlflow.start_run(experiment_id=experiment) as run:
        info = mlflow.sklearn.log_model(
            estimator, name="model",
            signature=infer_signature(features, estimator.predict(features)),
            input_example=features.head(2), pip_requirements=serving_requirements(),
            skops_trusted_types=trusted_types(estimator),
        )  # fmt: skip
    registered = register_version(client, settings.model_name, info, run.info.run_id, {}, alias)
    return str(registered.version)
