"""Option values several commands check alike: one rule each, one error wording."""

from __future__ import annotations

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
