"""The `mlcanary` command: one entry point that dispatches to the system's parts."""
