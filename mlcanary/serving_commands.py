"""`mlcanary serve-model`, `router` and `controller`: the long-running parts, one process each."""

from __future__ import annotations

import logging
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from common.settings import system_settings
from controller.answers import DEFAULT_LIMIT
from mlcanary.options import (
    NotifySecretFile,
    NotifyUrls,
    canary_percent,
    checked_sinks,
    read_secret,
    usable_log,
)
from mlcanary.output import (
    fail,
    invalid_settings,
)
from router.settings import RouterSettings

MIB = 1024 * 1024
ROUTER: dict[str, Any] = {
    name: field.default for name, field in RouterSettings.model_fields.items()
}
"""The router's defaults, stated once in RouterSettings: the command shows and passes them."""


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


class RuntimeKind(StrEnum):
    """Where the controller's model servers come from."""

    local = "local"
    static = "static"


def serve_model(
    model_uri: Annotated[str, typer.Argument(help="models:/Name/3, models:/Name@alias, runs:/…")],
    port: Annotated[int, typer.Option(help="Port; 0 picks a free one (native only).")] = 5001,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = ROUTER["host"],
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
    model_name: Annotated[
        str | None,
        typer.Option(help="Name on the V2 paths (/v2/models/NAME); default: registry name."),
    ] = None,
) -> None:
    """Serve one model version over MLflow's protocol and the Open Inference Protocol (V2).

    Both on one port: `/invocations`, and `/v2/models/NAME/infer` with V2's health and
    metadata endpoints. Runs until SIGTERM or Ctrl-C.
    """
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
            model_name=model_name,
        )
    except ValidationError as error:
        invalid_settings(error)
    try:
        code = serve(settings)
    except ModelLoadError as error:
        fail(str(error))
    raise typer.Exit(code)


def router(
    config: Annotated[Path, typer.Option(help="The routing file to follow.")] = Path(
        "config/routing.yaml"
    ),
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port; 0 picks a free one.")] = ROUTER["port"],
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
    ] = ROUTER["total_timeout_s"],
    max_body_mb: Annotated[float, typer.Option(help="Largest request body, MiB (413).")] = (
        ROUTER["max_body_bytes"] / MIB
    ),
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
    ] = ROUTER["drain_timeout_s"],
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
    ] = ROUTER["prediction_log_upload_s"],
    prediction_log_retention_days: Annotated[
        float,
        typer.Option(
            min=0.01, help="Days of a local prediction log kept (request bodies: personal data)."
        ),
    ] = ROUTER["prediction_log_retention_days"],
    header_timeout: Annotated[
        float, typer.Option(help="Seconds a request's line and headers may take to arrive.")
    ] = ROUTER["header_timeout_s"],
    keepalive_timeout: Annotated[
        float, typer.Option(help="Seconds an idle client connection is kept open.")
    ] = ROUTER["keepalive_timeout_s"],
    body_timeout: Annotated[
        float, typer.Option(help="Seconds a request body may pause before it is dropped.")
    ] = ROUTER["body_timeout_s"],
    max_connections: Annotated[
        int, typer.Option(help="Client connections held at once; more are closed at once.")
    ] = ROUTER["max_connections"],
    upstream_connections: Annotated[
        int, typer.Option(help="Connections to each model server at most; more requests wait.")
    ] = ROUTER["upstream_connections"],
    upstream_keepalive_timeout: Annotated[
        float,
        typer.Option(help="Seconds an idle model-server connection is kept (below uvicorn's 5)."),
    ] = ROUTER["upstream_keepalive_s"],
    reuse_port: Annotated[bool, typer.Option(hidden=True)] = False,
    settings_json: Annotated[str | None, typer.Option(hidden=True)] = None,
) -> None:
    """Run the router: split traffic between stable and canary as the routing file says."""
    from pydantic import SecretStr, ValidationError

    from contracts.routing import RoutingFileError
    from router.serve import run_router

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
                max_body_bytes=int(max_body_mb * MIB),
                controller_url=controller_url or system_settings().controller_url,
                prediction_log=prediction_log or str(system_settings().state_dir / "predictions"),
                prediction_log_spool=(
                    prediction_log_spool or system_settings().state_dir / "predictions-spool"
                ),
                prediction_log_upload_s=prediction_log_upload_interval,
                prediction_log_retention_days=prediction_log_retention_days,
                drain_timeout_s=drain_timeout,
                header_timeout_s=header_timeout,
                keepalive_timeout_s=keepalive_timeout,
                body_timeout_s=body_timeout,
                max_connections=max_connections,
                upstream_connections=upstream_connections,
                upstream_keepalive_s=upstream_keepalive_timeout,
            )
        )
        # Never on a command line (a worker's included): each process reads it from its
        # environment.
        force_token = system_settings().force_token
        if force_token:
            settings = settings.model_copy(update={"force_token": SecretStr(force_token)})
        run_router(
            settings,
            workers=workers,
            loop=loop.value,
            reuse_port=reuse_port,
            data_plane=data_plane.value,
        )
    except ValidationError as error:
        invalid_settings(error)
    except RoutingFileError as error:
        fail(str(error))
    except OSError as error:
        fail(f"the router cannot listen on {host}:{port}: {error.strerror or error}")


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
    max_logged_answers: Annotated[
        int,
        typer.Option(min=1000, help="Logged answers held to join labels with (oldest forgotten)."),
    ] = DEFAULT_LIMIT,
    label_retention_days: Annotated[
        float, typer.Option(min=0.01, help="Days labels are kept (dropped from the file at start).")
    ] = 90.0,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            help="A name the admin API answers to in Host, besides loopback's and --host"
            " (repeatable; space-separated in MLCANARY_ALLOWED_HOSTS).",
            envvar="MLCANARY_ALLOWED_HOSTS",
        ),
    ] = None,
    notify: NotifyUrls = None,
    notify_secret_file: NotifySecretFile = None,
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
        canary_weight=canary_percent() if canary_weight is None else canary_weight,
        log_percent=log_percent,
        confirm_timeout_s=confirm_timeout,
        stable_url=stable_url,
        canary_url=canary_url,
        configmap=configmap,
        namespace=namespace,
        allowed_hosts=tuple(allowed_host or ()),
        max_logged_answers=max_logged_answers,
        label_retention_days=label_retention_days,
        prediction_log=prediction_log and usable_log(prediction_log, "--prediction-log"),
        notify=checked_sinks(notify),
        notify_secret=read_secret(notify_secret_file),
    )
    try:
        asyncio.run(serve_controller(options, RegistrySettings.from_env()))
    except ControllerError as error:
        fail(str(error))
    except OSError as error:
        fail(f"the controller cannot listen on {host}:{port}: {error.strerror or error}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to `app`."""
    app.command("serve-model")(serve_model)
    app.command("router")(router)
    app.command("controller")(controller)
