"""`mlcanary up` and `render-k8s`: the whole system on one machine, or rendered for Kubernetes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from common.settings import system_settings
from mlcanary.options import (
    NotifySecretFile,
    NotifyUrls,
    canary_percent,
    checked_sinks,
    read_secret,
)
from mlcanary.output import fail, print_fields, progress, stderr, stdout
from training.errors import TrainingError

if TYPE_CHECKING:
    from orchestration.up import LocalSystem, UpOptions


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
        stdout().print(f"wrote {path}", highlight=False)
    stdout().print(f"apply with: kubectl apply -k {output}", highlight=False)


def up(
    mlflow_host: Annotated[str, typer.Option(help="Address of the MLflow UI.")] = "127.0.0.1",
    mlflow_port: Annotated[int, typer.Option(help="Port of the MLflow UI.")] = 5000,
    host: Annotated[str, typer.Option(help="Address of the router and controller.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port of the router (predictions).")] = 8000,
    controller_port: Annotated[int, typer.Option(help="Port of the admin API.")] = 8001,
    notify: NotifyUrls = None,
    notify_secret_file: NotifySecretFile = None,
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
        canary_percent=canary_percent(),
        stable_version=system_settings().model_version,
        notify=checked_sinks(notify),
        notify_secret_file=notify_secret_file and notify_secret_file.resolve(),
    )
    if notify_secret_file is not None:
        read_secret(notify_secret_file)  # refused here, before anything starts
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
            run_until_stopped(system, lambda text: stderr().print(text, highlight=False))
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
    stdout().print("stopped")


def _announce(system: LocalSystem, options: UpOptions) -> None:
    """Say what `up` trained and where to look."""
    for result in system.trained:
        stdout().print(
            f"trained {result.model_uri} ({result.kind.value}, alias {result.alias}, "
            f"r2 {result.metrics['r2']:.3f})",
            highlight=False,
        )
    print_fields("mlcanary is up", system.urls | {"state": str(options.state)})
    from orchestration.hints import command_as_typed

    command = command_as_typed()
    stdout().print("Try:", highlight=False)
    stdout().print(f"  {command} predict --count 20", highlight=False)
    stdout().print(f"  {command} weight 50 --reason 'looks good'", highlight=False)
    stdout().print(f"  {command} promote --reason 'better r2'", highlight=False)
    stdout().print("Press Ctrl-C to stop.")


def register(app: typer.Typer) -> None:
    """Add this module's commands to `app`."""
    app.command("render-k8s")(render_k8s)
    app.command("up")(up)
