"""How commands talk to people and scripts: progress, tables, JSON and one-line errors."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

import typer

if TYPE_CHECKING:
    from pydantic import ValidationError
    from rich.console import Console


@functools.cache
def console(*, to_stderr: bool) -> Console:
    """Return the rich console of stdout or stderr, made (and rich imported) on first use.

    A command that prints nothing through rich (an emergency `rollback`) never loads it.
    """
    from rich.console import Console

    return Console(stderr=to_stderr)


def stdout() -> Console:
    """Return the console of results (tables)."""
    return console(to_stderr=False)


def stderr() -> Console:
    """Return the console of errors, notes and progress."""
    return console(to_stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one error line to stderr and exit with `code`.

    Messages that come from elsewhere (MLflow's, a server's body) may span lines: they are
    joined into one, so scripts and container logs see one line per failure.
    """
    from rich.markup import escape

    line = escape(" ".join(message.split()))  # `[3].label`, `mlcanary[s3]` are not markup
    stderr().print(f"[bold red]error:[/] {line}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def invalid_settings(error: ValidationError) -> NoReturn:
    """Fail with exit code 2 naming each invalid setting and why, on one line."""
    from contracts.routing import validation_problems

    fail(f"invalid settings: {validation_problems(error)}", code=2)


def note(message: str) -> None:
    """Print one line to stderr (never wrapped): something the user should know, not a result."""
    stderr().print(message, highlight=False, soft_wrap=True, markup=False)


def print_json(value: Any) -> None:
    """Print `value` as indented JSON on stdout, nothing else, for scripts."""
    typer.echo(json.dumps(value, indent=2, sort_keys=True))


def print_fields(title: str, fields: Mapping[str, Any]) -> None:
    """Print a two-column table of named values."""
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in fields.items():
        table.add_row(key, "-" if value is None else str(value))
    stdout().print(table)


@contextmanager
def progress(first_step: str) -> Iterator[Any]:
    """Show a spinner on stderr; yield a function that names the current step."""
    with stderr().status(first_step) as status:

        def step(text: str) -> None:
            status.update(text)
            if not stderr().is_terminal:  # no spinner in a log file: say each step once instead
                stderr().print(f"... {text}", highlight=False)

        yield step
