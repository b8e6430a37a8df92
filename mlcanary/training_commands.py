"""`mlcanary generate-data`, `train` and `bootstrap`: the dataset and the first versions."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from mlcanary.admin import AsJson
from mlcanary.output import fail, note, print_fields, print_json, progress, stdout
from training.dataset import DEFAULT_PATH, DEFAULT_ROWS, DEFAULT_SEED
from training.errors import TrainingError
from training.pipelines import ModelKind


def generate_data(
    output: Annotated[
        Path, typer.Option(help="Where to write the CSV.", show_default="the packaged dataset")
    ] = DEFAULT_PATH,
    rows: Annotated[int, typer.Option(min=1, help="How many students.")] = DEFAULT_ROWS,
    seed: Annotated[int, typer.Option(help="Seed; the same seed gives the same bytes.")] = (
        DEFAULT_SEED
    ),
) -> None:
    """Write the synthetic student-exam-scores dataset (byte-for-byte reproducible)."""
    from training.dataset import write_dataset

    try:
        path = write_dataset(output, rows=rows, seed=seed)
    except OSError as error:
        fail(f"cannot write {output}: {error.strerror or error}")
    stdout().print(f"wrote {rows} rows to {path}", highlight=False)


def train(
    model: Annotated[ModelKind, typer.Option(help="Kind of regressor.")] = ModelKind.random_forest,
    data: Annotated[
        Path, typer.Option(help="Training CSV.", show_default="the packaged dataset")
    ] = DEFAULT_PATH,
    name: Annotated[
        str | None, typer.Option(help="Registered model name.", show_default="$DEFAULT_MODEL_NAME")
    ] = None,
    alias: Annotated[
        str | None,
        typer.Option(
            help="Alias for the new version.",
            show_default="champion for the first version, else challenger",
        ),
    ] = None,
    no_alias: Annotated[
        bool, typer.Option("--no-alias", help="Give the version no alias.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed for the split and the model.")] = DEFAULT_SEED,
    test_size: Annotated[float, typer.Option(help="Held-out share of rows.")] = 0.2,
    permute_labels: Annotated[
        bool,
        typer.Option(
            "--permute-labels",
            help="Train on scores permuted across rows: right in distribution, wrong per row"
            " (a canary only labels catch).",
        ),
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Train a model on the dataset, log it to MLflow and register a new version."""
    from common.settings import RegistrySettings
    from training.train import TrainOptions, train_and_register

    if alias is not None and no_alias:
        fail("--alias and --no-alias exclude each other", code=2)
    options = TrainOptions(
        kind=model, data_path=data, seed=seed, test_size=test_size,
        alias="" if no_alias else alias, permute_labels=permute_labels,
    )  # fmt: skip
    settings = RegistrySettings.from_env(model_name=name)
    try:
        with progress("Starting") as step:
            result = train_and_register(options, settings, step)
    except TrainingError as error:
        fail(str(error))
    if json_output:
        print_json(asdict(result) | {"tracking_uri": settings.tracking_uri})
        return
    print_fields(
        f"Registered {result.model_uri}",
        {
            "version": result.version,
            "alias": result.alias,
            "model": result.kind.value,
            **{metric: f"{value:.4f}" for metric, value in result.metrics.items()},
            "run": result.run_id,
            "registry": settings.tracking_uri,
            "took": f"{result.seconds:.1f} s",
        },
    )


def bootstrap(
    as_json: AsJson = False,
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for an MLflow server that cannot be reached.")
    ] = 0.0,
) -> None:
    """Train and register a champion and a challenger if the registry has no versions yet."""
    from mlflow.exceptions import MlflowException

    from common.settings import RegistrySettings
    from orchestration.up import bootstrap_registry
    from training.registry import wait_until_reachable

    settings = RegistrySettings.from_env()
    try:
        wait_until_reachable(settings.tracking_uri, wait, note)
        with progress("Checking the registry") as step:
            trained = bootstrap_registry(settings, step)
    except TrainingError as error:
        fail(str(error))
    except MlflowException as error:  # e.g. a server that refuses this client (403)
        fail(f"the MLflow server at {settings.tracking_uri} refused: {error.message}")
    if as_json:
        print_json([{"version": t.version, "alias": t.alias, "uri": t.model_uri} for t in trained])
        return
    if not trained:
        stdout().print("the registry already has versions: nothing trained")
    for result in trained:
        stdout().print(f"trained {result.model_uri} (alias {result.alias})", highlight=False)


def register(app: typer.Typer) -> None:
    """Add this module's commands to `app`."""
    app.command("generate-data")(generate_data)
    app.command("train")(train)
    app.command("bootstrap")(bootstrap)
