"""The `mlcanary` command line: thin commands that hand their work to the system's parts.

Each subsystem's commands live in a module of their own and are added here; importing this
module imports none of the parts (each command imports what it runs when it runs), so that an
emergency `mlcanary rollback` starts in a fraction of a second.
"""

from __future__ import annotations

import logging
import os
from typing import Annotated

import typer

from common.redaction import redact_logs
from mlcanary import (
    admin,
    predictions_commands,
    serving_commands,
    system_commands,
    training_commands,
)
from mlcanary.output import fail
from mlcanary.rollout_commands import rollout_app

app = typer.Typer(
    help="Canary deployments for MLflow models: train, serve, split traffic, promote, roll back.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help (click's): wrapped to the terminal, never cut, the same when piped.
    rich_markup_mode=None,
)


@app.callback()
def configure(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show MLflow's logs.")] = False,
) -> None:
    """Canary deployments for MLflow models."""
    level = "INFO" if verbose else "WARNING"
    logging.basicConfig(level=level)
    redact_logs()  # no credential in a URI reaches a log
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", level)  # read when mlflow is first imported
    # mlflow writes "View run … at …" to stdout, which must stay clean for --json.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # mlflow 3 sends usage telemetry to its makers by default; a local system should not.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    logging.getLogger("alembic").setLevel(level)
    from common.settings import SettingsError, system_settings

    try:  # once, for every command: a bad setting is the same error whichever command reads it
        system_settings()
    except SettingsError as error:
        fail(str(error), code=2)


training_commands.register(app)
serving_commands.register(app)
admin.register(app)
app.add_typer(rollout_app, name="rollout")
system_commands.register(app)
app.add_typer(predictions_commands.predictions_app, name="predictions")


def main() -> None:
    """Run the command line."""
    app()
