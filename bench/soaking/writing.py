"""The soak's report: a JSON summary, and Markdown with plots (PNG, matplotlib) beside it."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.soaking.sampling import ProcessSample

FIGURES = (("rss_mib", "resident memory (MiB)"), ("open_files", "open files"),
           ("threads", "threads"), ("sockets", "sockets"))  # fmt: skip


def write_report(folder: Path, summary: dict[str, Any], samples: Sequence[ProcessSample],
                 sizes: Sequence[tuple[float, dict[str, int]]]) -> None:  # fmt: skip
    """Write `summary.json`, `README.md` and the plots into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    plots = _plot_processes(folder, samples, summary["started"]) + _plot_sizes(
        folder, sizes, summary["started"]
    )
    (folder / "README.md").write_text(_markdown(summary, plots))


def _plot_processes(folder: Path, samples: Sequence[ProcessSample], start: float) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[tuple[str, int], list[ProcessSample]] = defaultdict(list)
    for sample in samples:
        series[(sample.role, sample.pid)].append(sample)
    figure, axes = plt.subplots(len(FIGURES), 1, figsize=(10, 3 * len(FIGURES)), sharex=True)
    for axis, (name, title) in zip(axes, FIGURES, strict=True):
        for (role, pid), points in sorted(series.items()):
            if len(points) < 2 or role.startswith("model server worker"):
                continue
            minutes = [(p.time - start) / 60 for p in points]
            axis.plot(minutes, [getattr(p, name) for p in points], label=f"{role} ({pid})")
        axis.set_ylabel(title)
    axes[-1].set_xlabel("minutes")
    axes[0].legend(fontsize=6, ncol=3, loc="upper left")
    figure.tight_layout()
    figure.savefig(folder / "processes.png", dpi=80)
    plt.close(figure)
    return ["processes.png"]


def _plot_sizes(folder: Path, sizes: Sequence[tuple[float, dict[str, int]]],
                start: float) -> list[str]:  # fmt: skip
    import matplotlib.pyplot as plt

    names = sorted({name for _, sized in sizes for name in sized})
    figure, axis = plt.subplots(figsize=(10, 4))
    for name in names:
        minutes = [(at - start) / 60 for at, _ in sizes]
        axis.plot(minutes, [sized.get(name, 0) / 2**20 for _, sized in sizes], label=name)
    axis.set_xlabel("minutes")
    axis.set_ylabel("MiB")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(folder / "folders.png", dpi=80)
    plt.close(figure)
    return ["folders.png"]


def _markdown(summary: dict[str, Any], plots: list[str]) -> str:
    lines = [
        "# Soak and chaos run", "",
        f"Command: `{summary['command']}`  ", f"Machine: {summary['machine']}  ",
        f"Ran {summary['minutes']:.1f} minutes at {summary['rate']} requests/s;"
        f" result: **{'passed' if not summary['checks']['failed'] else 'FAILED'}**.", "",
        "## Checks", "",
        *[f"- held: {item}" for item in summary["checks"]["held"]],
        *[f"- **failed**: {item}" for item in summary["checks"]["failed"]], "",
        "## Requests", "", "```", json.dumps(summary["traffic"]["requests"], indent=1), "```",
        "", "Failures by allowance:", "",
        *[f"- {why or 'none (a defect)'}: {count}"
          for why, count in summary["failures_by_allowance"].items()], "",
        "## Rollouts", "", "| model | version | expected | verdict | failed gates | right |",
        "|---|---|---|---|---|---|",
        *[f"| {v['name']} | {v['version']} | {v['expected']} | {v['status']} |"
          f" {', '.join(v['failed_gates'])} | {v['right']} |" for v in summary["verdicts"]],
        "", "## Faults", "", "| fault | began (min) | lasted (s) | note |", "|---|---|---|---|",
        *[f"| {f['name']} | {(f['began'] - summary['started']) / 60:.1f} |"
          f" {f['ended'] - f['began']:.1f} | {f['note']} |" for f in summary["faults"]],
        "", "## Labels", "", "```", json.dumps(summary["labels"], indent=1), "```", "",
        "## Growth after warm-up (per hour)", "",
        "| process | figure | per hour | span (min) | judged | bound |",
        "|---|---|---|---|---|---|",
        *[f"| {s['role']} ({s['pid']}) | {s['figure']} | {s['per_hour']:.2f} |"
          f" {s['span_s'] / 60:.1f} | {s['judged']} | {s['bound']} |" for s in summary["slopes"]
          if s["span_s"] > 0],
        "", "## Folders (bytes at the end)", "", "```",
        json.dumps(summary["folders"], indent=1), "```", "",
        *[f"![{plot}]({plot})" for plot in plots], "",
    ]  # fmt: skip
    return "\n".join(lines)
