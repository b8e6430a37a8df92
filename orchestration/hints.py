"""Hints printed for the user: commands named as their shell can run them."""

from __future__ import annotations

import contextlib
import shutil
import sys
from pathlib import Path


def command_as_typed() -> str:
    """Name the `mlcanary` command as the user can type it in their shell.

    `make up` installs it in `.venv/bin`, which a new user's PATH does not hold: then the hint
    says `.venv/bin/mlcanary` (relative when under the current folder), never a bare name the
    shell would not find, or find as another installation.
    """
    installed = Path(sys.executable).parent / "mlcanary"
    found = shutil.which("mlcanary")
    if found is not None and Path(found).resolve() == installed.resolve():
        return "mlcanary"
    if not installed.exists():
        return f"{sys.executable} -m mlcanary"
    with contextlib.suppress(ValueError):
        return str(installed.relative_to(Path.cwd()))
    return str(installed)
