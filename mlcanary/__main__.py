"""Run the `mlcanary` command as `python -m mlcanary`."""

from mlcanary.cli import main

main()
