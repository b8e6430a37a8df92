"""How commands talk to people and scripts: progress, tables, JSON and one-line errors."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

stdout = Console()
stderr = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one error line to stderr and exit with `code`.

    Messages that come from elsewhere (MLflow's, a server's body) may span lines: they are
    joined into one, so scripts and container logs see one line per failure.
    """
    line = escape(" ".join(message.split()))  # `[3].label`, `mlcanary[s3]` are not markup
    stderr.print(f"[bold red]error:[/] {line}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def note(message: str) -> None:
    """Print one line to stderr (never wrapped): something the user should know, not a result."""
    stderr.print(message, highlight=False, soft_wrap=True, markup=False)


def print_json(value: Any) -> None:
    """Print `value` as indented JSON on stdout, nothing else, for scripts."""
    typer.echo(json.dumps(value, indent=2, sort_keys=True))


def print_fields(title: str, fields: Mapping[str, Any]) -> None:
    """Print a two-column table of named values."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in fields.items():
        table.add_row(key, "-" if value is None else str(value))
    stdout.print(table)


@contextmanager
def progress(first_step: str) -> Iterator[Any]:
    """Show a spinner on stderr; yield a function that names the current step."""
    with stderr.status(first_step) as status:

        def step(text: str) -> None:
            status.update(text)
            if not stderr.is_terminal:  # no spinner in a log file: say each step once instead
                stderr.print(f"... {text}", highlight=False)

        yield step
