"""The `mlcanary` command line: thin commands that hand their work to the system's parts."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from common.settings import SettingsError, system_settings
from mlcanary import admin
from mlcanary.admin import AsJson
from mlcanary.output import fail, note, print_fields, print_json, progress, stderr, stdout
from mlcanary.rollout_commands import rollout_app
from training.dataset import DEFAULT_PATH, DEFAULT_ROWS, DEFAULT_SEED
from training.errors import TrainingError
from training.pipelines import ModelKind

if TYPE_CHECKING:
    from pydantic import ValidationError

    from orchestration.up import LocalSystem, UpOptions


class Loop(StrEnum):
    """Event loops the router can run on."""

    asyncio = "asyncio"
    uvloop = "uvloop"


class DataPlaneKind(StrEnum):
    """How the router relays scoring traffic."""

    aiohttp = "aiohttp"
    raw = "raw"


class Engine(StrEnum):
    """Model server engines."""

    native = "native"
    mlflow = "mlflow"


app = typer.Typer(
    help="Canary deployments for MLflow models: train, serve, split traffic, promote, roll back.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def configure(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show MLflow's logs.")] = False,
) -> None:
    """Canary deployments for MLflow models."""
    level = "INFO" if verbose else "WARNING"
    logging.basicConfig(level=level)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", level)  # read when mlflow is first imported
    # mlflow writes "View run … at …" to stdout, which must stay clean for --json.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # mlflow 3 sends usage telemetry to its makers by default; a local system should not.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    logging.getLogger("alembic").setLevel(level)
    try:  # once, for every command: a bad setting is the same error whichever command reads it
        system_settings()
    except SettingsError as error:
        fail(str(error), code=2)


@app.command("generate-data")
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
    stdout.print(f"wrote {rows} rows to {path}", highlight=False)


@app.command()
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


@app.command("serve-model")
def serve_model(
    model_uri: Annotated[str, typer.Argument(help="models:/Name/3, models:/Name@alias, runs:/…")],
    port: Annotated[int, typer.Option(help="Port; 0 picks a free one (native only).")] = 5001,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    engine: Annotated[
        Engine, typer.Option(help="native: fast aiohttp server; mlflow: `mlflow models serve`.")
    ] = Engine.native,
    batching: Annotated[bool, typer.Option(help="Micro-batch concurrent requests.")] = True,
    batch_window_ms: Annotated[
        float, typer.Option(help="Extra wait to gather a batch, in ms.")
    ] = 0.0,
    max_batch_rows: Annotated[int, typer.Option(help="Most rows in one predict call.")] = 512,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body, MiB.")] = 64.0,
    mlflow_idle_s: Annotated[
        float, typer.Option(help="Stop MLflow's worker process after this long unused, s.")
    ] = 60.0,
) -> None:
    """Serve one model version over MLflow's scoring protocol until SIGTERM or Ctrl-C."""
    from pydantic import ValidationError

    from common.settings import RegistrySettings
    from model_server.model.loading import ModelLoadError
    from model_server.serve import serve
    from model_server.settings import ServerSettings

    logging.getLogger("model_server").setLevel(logging.INFO)
    # The same registry `train` uses: the embedded one unless MLFLOW_TRACKING_URI says otherwise.
    os.environ.setdefault("MLFLOW_TRACKING_URI", RegistrySettings.from_env().tracking_uri)
    try:
        settings = ServerSettings(
            model_uri=model_uri,
            host=host,
            port=port,
            engine=engine.value,
            batching=batching,
            batch_window_ms=batch_window_ms,
            max_batch_rows=max_batch_rows,
            max_body_bytes=int(max_body_mb * 1024 * 1024),
            mlflow_idle_s=mlflow_idle_s,
        )
    except ValidationError as error:
        fail(f"invalid settings: {_problems(error)}", code=2)
    try:
        code = serve(settings)
    except ModelLoadError as error:
        fail(str(error))
    raise typer.Exit(code)


@app.command()
def router(
    config: Annotated[Path, typer.Option(help="The routing file to follow.")] = Path(
        "config/routing.yaml"
    ),
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port; 0 picks a free one.")] = 8000,
    workers: Annotated[
        int, typer.Option(min=1, help="Processes sharing the port (SO_REUSEPORT).")
    ] = 1,
    loop: Annotated[Loop, typer.Option(help="Event loop implementation.")] = Loop.uvloop,
    data_plane: Annotated[
        DataPlaneKind,
        typer.Option(
            help="raw: httptools fast path for POST /invocations, the rest via aiohttp; "
            "aiohttp: everything through aiohttp."
        ),
    ] = DataPlaneKind.raw,
    timeout: Annotated[
        float, typer.Option(help="Seconds an upstream may take before the client gets 504.")
    ] = 30.0,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body, MiB (413).")] = 16.0,
    controller_url: Annotated[
        str | None,
        typer.Option(
            "--controller",
            help="Controller for the original admin paths (MLCANARY_CONTROLLER_URL).",
        ),
    ] = None,
    drain_timeout: Annotated[
        float,
        typer.Option(help="On SIGTERM/SIGINT: seconds to answer requests already received."),
    ] = 30.0,
    prediction_log: Annotated[
        str | None,
        typer.Option(
            help="The prediction log (the routing file's `log.percent` of answers): a folder,"
            " or an fsspec URL such as s3://bucket/predictions (uploaded in parts).",
            show_default="$MLCANARY_HOME/predictions",
        ),
    ] = None,
    prediction_log_spool: Annotated[
        Path | None,
        typer.Option(
            help="With a prediction log URL: the local folder written before each upload.",
            show_default="$MLCANARY_HOME/predictions-spool",
        ),
    ] = None,
    prediction_log_upload_interval: Annotated[
        float,
        typer.Option(min=0.1, help="With a prediction log URL: seconds between uploads."),
    ] = 10.0,
    header_timeout: Annotated[
        float, typer.Option(help="Seconds a request's line and headers may take to arrive.")
    ] = 10.0,
    keepalive_timeout: Annotated[
        float, typer.Option(help="Seconds an idle client connection is kept open.")
    ] = 15.0,
    body_timeout: Annotated[
        float, typer.Option(help="Seconds a request body may pause before it is dropped.")
    ] = 60.0,
    max_connections: Annotated[
        int, typer.Option(help="Client connections held at once; more are closed at once.")
    ] = 4096,
    upstream_connections: Annotated[
        int, typer.Option(help="Connections to each model server at most; more requests wait.")
    ] = 256,
    upstream_keepalive_timeout: Annotated[
        float,
        typer.Option(help="Seconds an idle model-server connection is kept (below uvicorn's 5)."),
    ] = 4.0,
    reuse_port: Annotated[bool, typer.Option(hidden=True)] = False,
    settings_json: Annotated[str | None, typer.Option(hidden=True)] = None,
) -> None:
    """Run the router: split traffic between stable and canary as the routing file says."""
    from pydantic import ValidationError

    from contracts.routing import RoutingFileError
    from router.serve import run_router
    from router.settings import RouterSettings

    logging.getLogger("router").setLevel(logging.INFO)
    try:
        # Workers started by --workers get their parent's settings whole.
        settings = (
            RouterSettings.model_validate_json(settings_json)
            if settings_json
            else RouterSettings(
                config_path=config,
                host=host,
                port=port,
                total_timeout_s=timeout,
                max_body_bytes=int(max_body_mb * 1024 * 1024),
                controller_url=controller_url or system_settings().controller_url,
                prediction_log=prediction_log or str(system_settings().state_dir / "predictions"),
                prediction_log_spool=(
                    prediction_log_spool or system_settings().state_dir / "predictions-spool"
                ),
                prediction_log_upload_s=prediction_log_upload_interval,
                drain_timeout_s=drain_timeout,
                header_timeout_s=header_timeout,
                keepalive_timeout_s=keepalive_timeout,
                body_timeout_s=body_timeout,
                max_connections=max_connections,
                upstream_connections=upstream_connections,
                upstream_keepalive_s=upstream_keepalive_timeout,
            )
        )
        run_router(
            settings,
            workers=workers,
            loop=loop.value,
            reuse_port=reuse_port,
            data_plane=data_plane.value,
        )
    except ValidationError as error:
        fail(f"invalid settings: {_problems(error)}", code=2)
    except RoutingFileError as error:
        fail(str(error))
    except OSError as error:
        fail(f"the router cannot listen on {host}:{port}: {error.strerror or error}")


class RuntimeKind(StrEnum):
    """Where the controller's model servers come from."""

    local = "local"
    static = "static"


def _usable_log(location: str, option: str) -> str:
    """Return a prediction log location whose filesystem is usable here; exit 2 if not."""
    from common.predictionlog import check_location

    try:
        return str(check_location(location))
    except ValueError as error:
        fail(f"{option}: {error}", code=2)


def _canary_percent() -> float:
    """Return the original `CANARY_PROBABILITY` (0-1) as a percent; exit 2 if it is bad."""
    try:
        return system_settings().canary_percent()
    except SettingsError as error:
        fail(str(error), code=2)


@app.command()
def controller(
    config: Annotated[
        Path | None, typer.Option(help="Routing file (default: the state folder's routing.yaml).")
    ] = None,
    host: Annotated[str, typer.Option(help="Address of the admin API.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the admin API.")] = 8001,
    router_url: Annotated[
        list[str] | None,
        typer.Option("--router", help="A router that must confirm each change (repeatable)."),
    ] = None,
    router_endpoints: Annotated[
        str | None,
        typer.Option(
            help="Kubernetes: the routers are the ready pods of this Service (its Endpoints);"
            " each confirms every change and has its metrics read."
        ),
    ] = None,
    runtime: Annotated[RuntimeKind, typer.Option(help="local starts model servers.")] = (
        RuntimeKind.local
    ),
    stable_version: Annotated[
        str | None,
        typer.Option(help="For a new routing file: version, or latest (DEFAULT_MODEL_VERSION)."),
    ] = None,
    canary_version: Annotated[
        str | None, typer.Option(help="For a new routing file: version, or challenger.")
    ] = None,
    canary_weight: Annotated[
        float | None, typer.Option(help="For a new routing file: percent (CANARY_PROBABILITY).")
    ] = None,
    log_percent: Annotated[
        float,
        typer.Option(
            min=0, max=100, help="For a new routing file: percent of answers in the prediction log."
        ),
    ] = 100.0,
    prediction_log: Annotated[
        str | None,
        typer.Option(
            help="The routers' prediction log, joined with labels: a folder or an fsspec URL.",
            show_default="$MLCANARY_HOME/predictions",
        ),
    ] = None,
    confirm_timeout: Annotated[
        float, typer.Option(help="Seconds the routers get to load a change.")
    ] = 5.0,
    stable_url: Annotated[
        str | None, typer.Option(help="For a new routing file: adopt this stable server.")
    ] = None,
    canary_url: Annotated[
        str | None, typer.Option(help="For a new routing file: adopt this canary server.")
    ] = None,
    configmap: Annotated[
        str | None, typer.Option(help="Keep the routing file in this Kubernetes ConfigMap.")
    ] = None,
    namespace: Annotated[
        str | None,
        typer.Option(help="The ConfigMap's and router Service's namespace (default: the pod's)."),
    ] = None,
) -> None:
    """Run the controller: the admin API that deploys, weights, promotes and rolls back."""
    import asyncio

    from common.settings import RegistrySettings, state_dir
    from controller.errors import ControllerError
    from controller.serve import ControllerOptions, serve_controller

    logging.getLogger("controller").setLevel(logging.INFO)
    if router_url and router_endpoints:
        fail("give --router or --router-endpoints, not both", code=2)
    state = state_dir()
    options = ControllerOptions(
        routing_path=(config or state / "routing.yaml").resolve(),
        state=state,
        host=host,
        port=port,
        routers=[url.rstrip("/") for url in router_url or []],
        router_endpoints=router_endpoints,
        runtime=runtime.value,
        stable_version=stable_version or system_settings().model_version,
        canary_version=canary_version,
        canary_weight=_canary_percent() if canary_weight is None else canary_weight,
        log_percent=log_percent,
        confirm_timeout_s=confirm_timeout,
        stable_url=stable_url,
        canary_url=canary_url,
        configmap=configmap,
        namespace=namespace,
        prediction_log=prediction_log and _usable_log(prediction_log, "--prediction-log"),
    )
    try:
        asyncio.run(serve_controller(options, RegistrySettings.from_env()))
    except ControllerError as error:
        fail(str(error))
    except OSError as error:
        fail(f"the controller cannot listen on {host}:{port}: {error.strerror or error}")


admin.register(app)
app.add_typer(rollout_app, name="rollout")


@app.command("render-k8s")
def render_k8s(
    output: Annotated[Path, typer.Option(help="Folder to write the overlay into.")],
    stable: Annotated[str, typer.Option(help="Stable model version.")],
    canary: Annotated[
        str | None, typer.Option(help="Canary model version (none: no canary).")
    ] = None,
    weight: Annotated[float, typer.Option(help="Canary percent of traffic.")] = 10.0,
    namespace: Annotated[str, typer.Option(help="Namespace to deploy into.")] = "mlcanary",
    registry: Annotated[str, typer.Option(help="Image registry prefix.")] = "mlcanary",
    tag: Annotated[str, typer.Option(help="Image tag.")] = "dev",
    tracking_uri: Annotated[str, typer.Option(help="MLflow server the pods use.")] = (
        "http://mlflow:5000"
    ),
) -> None:
    """Write Kubernetes manifests (a kustomize overlay) for a stable and a canary version."""
    from controller.errors import ControllerError
    from orchestration.manifests import Release, render_overlay

    model = system_settings().model_name
    release = Release(model, stable, canary, weight, namespace, registry, tag, tracking_uri)
    try:
        written = render_overlay(release, output)
    except ControllerError as error:
        fail(str(error))
    for path in written:
        stdout.print(f"wrote {path}", highlight=False)
    stdout.print(f"apply with: kubectl apply -k {output}", highlight=False)


@app.command()
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
        stdout.print("the registry already has versions: nothing trained")
    for result in trained:
        stdout.print(f"trained {result.model_uri} (alias {result.alias})", highlight=False)


@app.command()
def up(
    mlflow_host: Annotated[str, typer.Option(help="Address of the MLflow UI.")] = "127.0.0.1",
    mlflow_port: Annotated[int, typer.Option(help="Port of the MLflow UI.")] = 5000,
    host: Annotated[str, typer.Option(help="Address of the router and controller.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port of the router (predictions).")] = 8000,
    controller_port: Annotated[int, typer.Option(help="Port of the admin API.")] = 8001,
) -> None:
    """Run the whole system locally until Ctrl-C: MLflow, models, controller, router."""
    from common.settings import RegistrySettings, state_dir
    from common.supervision import ChildFailed
    from orchestration.up import (
        LocalSystem,
        UpOptions,
        run_until_stopped,
        signals_ignored,
        start_system,
        terminate_as_interrupt,
    )

    options = UpOptions(
        state=state_dir(),
        mlflow_host=mlflow_host,
        mlflow_port=mlflow_port,
        host=host,
        router_port=port,
        controller_port=controller_port,
        canary_percent=_canary_percent(),
        stable_version=system_settings().model_version,
    )
    settings = RegistrySettings.from_env()
    system = LocalSystem()
    started = False
    problem = None
    with terminate_as_interrupt():
        try:
            with progress("Starting") as step:
                start_system(options, settings, system, step)
            started = True
            _announce(system, options)
            run_until_stopped(system, lambda text: stderr.print(text, highlight=False))
        except KeyboardInterrupt:
            pass
        except (ChildFailed, TrainingError) as error:
            problem = str(error)
        finally:
            with signals_ignored():
                system.stop()
    if problem:
        fail(problem)
    if not started:
        fail("interrupted while starting; everything started was stopped", code=130)
    stdout.print("stopped")


def _announce(system: LocalSystem, options: UpOptions) -> None:
    """Say what `up` trained and where to look."""
    for result in system.trained:
        stdout.print(
            f"trained {result.model_uri} ({result.kind.value}, alias {result.alias}, "
            f"r2 {result.metrics['r2']:.3f})",
            highlight=False,
        )
    print_fields("mlcanary is up", system.urls | {"state": str(options.state)})
    from orchestration.hints import command_as_typed

    command = command_as_typed()
    stdout.print("Try:", highlight=False)
    stdout.print(f"  {command} predict --count 20", highlight=False)
    stdout.print(f"  {command} weight 50 --reason 'looks good'", highlight=False)
    stdout.print(f"  {command} promote --reason 'better r2'", highlight=False)
    stdout.print("Press Ctrl-C to stop.")


def _problems(error: ValidationError) -> str:
    """Name each invalid setting and why, on one line."""
    from contracts.routing import validation_problems

    return validation_problems(error)


def main() -> None:
    """Run the command line."""
    app()


predictions_app = typer.Typer(help="The prediction log: what the routers answered, by request id.")
app.add_typer(predictions_app, name="predictions")


@predictions_app.command("export")
def predictions_export(
    output: Annotated[Path, typer.Argument(help="A .csv or .parquet file to write.")],
    since: Annotated[
        str | None,
        typer.Option(help="Only records from this UTC time on (ISO 8601, e.g. 2026-12-01T10:00)."),
    ] = None,
    location: Annotated[
        str | None,
        typer.Option(
            "--log",
            help="The log: a folder or an fsspec URL.",
            show_default="$MLCANARY_HOME/predictions",
        ),
    ] = None,
) -> None:
    """Write the logged predictions (one row per record) to CSV or Parquet."""
    from datetime import UTC, datetime

    from common.predictionlog import load_predictions

    try:
        start = datetime.fromisoformat(since).replace(tzinfo=UTC).timestamp() if since else 0.0
    except ValueError:
        fail(f"--since must be an ISO 8601 time, got {since!r}", code=2)
    if output.suffix not in (".csv", ".parquet"):
        fail(f"{output}: the name must end in .csv or .parquet", code=2)
    log = (
        _usable_log(location, "--log") if location else system_settings().state_dir / "predictions"
    )
    frame = load_predictions(log, start)
    try:
        if output.suffix == ".csv":
            frame.to_csv(output, index=False)
        else:
            frame.to_parquet(output, index=False)
    except OSError as error:
        fail(f"cannot write {output}: {error.strerror or error}")
    stdout.print(f"wrote {len(frame)} records to {output}", highlight=False)
