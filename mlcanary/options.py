"""Option values several commands check alike: one rule each, one error wording."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlcanary.output import fail


def usable_log(location: str, option: str) -> str:
    """Return a prediction log location whose filesystem is usable here; exit 2 if not."""
    from common.predictionlog import check_location

    try:
        return str(check_location(location))
    except ValueError as error:
        fail(f"{option}: {error}", code=2)


def canary_percent() -> float:
    """Return the original `CANARY_PROBABILITY` (0-1) as a percent; exit 2 if it is bad."""
    from common.settings import SettingsError, system_settings

    try:
        return system_settings().canary_percent()
    except SettingsError as error:
        fail(str(error), code=2)


NotifyUrls = Annotated[
    list[str] | None,
    typer.Option(
        "--notify",
        help="Send every change and rollout event here: a webhook URL, or slack+https://… for"
        " a Slack incoming webhook (repeatable; space-separated in MLCANARY_NOTIFY).",
        envvar="MLCANARY_NOTIFY",
    ),
]
NotifySecretFile = Annotated[
    Path | None,
    typer.Option(
        help="A file holding the key webhook notifications are signed with (HMAC-SHA256).",
        envvar="MLCANARY_NOTIFY_SECRET_FILE",
    ),
]


def checked_sinks(urls: list[str] | None) -> tuple[str, ...]:
    """Return the notification URLs, each checked; exit 2 naming a bad one."""
    from controller.notifications import MAX_SINKS, Sink

    given = tuple(urls or ())
    if len(given) > MAX_SINKS:
        fail(f"--notify: at most {MAX_SINKS} URLs", code=2)
    for url in given:
        try:
            Sink.parse(url)
        except ValueError as error:
            fail(f"--notify: {error}", code=2)
    return given


def read_secret(path: Path | None) -> bytes | None:
    """Return the signing key kept in `path` (surrounding whitespace dropped).

    Exit 2 if it cannot be read or is empty. The key itself is never printed.
    """
    if path is None:
        return None
    try:
        secret = path.read_bytes().strip()
    except OSError as error:
        fail(f"--notify-secret-file: {path} cannot be read: {error.strerror or error}", code=2)
    if not secret:
        fail(f"--notify-secret-file: {path} is empty", code=2)
    return secret
