"""`mlcanary predictions export`: the prediction log, as the routers recorded it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from common.settings import system_settings
from mlcanary.options import usable_log
from mlcanary.output import fail, stdout

predictions_app = typer.Typer(
    help="The prediction log: what the routers answered, by request id.", rich_markup_mode=None
)


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
    log = usable_log(location, "--log") if location else system_settings().state_dir / "predictions"
    frame = load_predictions(log, start)
    try:
        if output.suffix == ".csv":
            frame.to_csv(output, index=False)
        else:
            frame.to_parquet(output, index=False)
    except OSError as error:
        fail(f"cannot write {output}: {error.strerror or error}")
    stdout().print(f"wrote {len(frame)} records to {output}", highlight=False)
