"""A finished rollout's verdict written back to MLflow, where the model's versions are.

One run in the model's experiment per rollout: every judged window's gate values as metrics
(`gate.<name>`, and the sequential test's evidence as `gate.<name>.evidence`, the window's
number as the step), the labelled rows and canary requests per window, each variant's 5xx
share, p50, p99 and quality on labelled rows per window (`canary.p99_s`, ...), the outcome
and its reason as tags; as artifacts, plots of the gates over the windows, of both variants'
errors, latency and quality over the windows, and of their prediction distributions, with the
rollout's whole state (JSON).
The canary's version gets the tags `mlcanary.rollout_run_id` and `mlcanary.rollout_verdict`,
so the registry page of a version says why it was promoted or rolled back.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from common.settings import EXPERIMENT_NAME, RegistrySettings
from controller.rollout.histograms import ordered
from training.registry import connect, ensure_experiment

log = logging.getLogger("controller")


def record_verdict(settings: RegistrySettings, state: dict[str, Any]) -> str:
    """Log the finished rollout `state` (`RolloutState.to_json()`) as a run; return its id."""
    from mlflow.entities import Metric, Param, RunTag

    client = connect(settings)
    experiment = ensure_experiment(client, EXPERIMENT_NAME, settings.artifact_root)
    canary, stable = str(state["canary_version"]), str(state.get("stable_version") or "")
    run = client.create_run(experiment, run_name=f"rollout of v{canary}: {state['status']}")
    run_id = str(run.info.run_id)
    metrics = []
    for index, entry in enumerate(state["history"]):
        at = int(entry["time"] * 1000)
        for gate in entry["gates"]:
            name = "gate." + gate["gate"].replace(":", ".")
            if gate.get("value") is not None:
                metrics.append(Metric(name, float(gate["value"]), at, index))
            if gate.get("evidence") is not None:
                evidence = min(float(gate["evidence"]), 1e300)
                metrics.append(Metric(f"{name}.evidence", evidence, at, index))
        for key in ("weight", "canary_requests"):
            if entry.get(key) is not None:
                metrics.append(Metric(key, float(entry[key]), at, index))
        if entry.get("labelled"):
            metrics.append(Metric("labelled_canary_rows", float(entry["labelled"][0]), at, index))
        for variant, figures in (entry.get("variants") or {}).items():
            for key, value in figures.items():
                if value is not None:
                    metrics.append(Metric(f"{variant}.{key}", float(value), at, index))
    plan = state["plan"]
    params = [Param("steps", ",".join(f"{s:g}" for s in plan["steps"])),
              Param("interval_s", str(plan["interval_s"])),
              *(Param(f"limits.{k}", str(v)) for k, v in plan["limits"].items())]  # fmt: skip
    tags = [RunTag("mlcanary.verdict", state["status"]),
            RunTag("mlcanary.reason", state.get("message", "")[:5000]),
            RunTag("mlcanary.canary_version", canary),
            RunTag("mlcanary.stable_version", stable),
            RunTag("mlflow.note.content", _note(state))]  # fmt: skip
    for start in range(0, len(metrics), 1000):  # MLflow takes at most 1,000 a batch
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    client.log_batch(run_id, params=params, tags=tags)
    with tempfile.TemporaryDirectory() as folder:
        for path in _artifacts(state, Path(folder)):
            client.log_artifact(run_id, str(path))
    client.set_terminated(run_id)
    for key, value in (("mlcanary.rollout_run_id", run_id),
                       ("mlcanary.rollout_verdict", state["status"])):  # fmt: skip
        client.set_model_version_tag(settings.model_name, canary, key, value)
    return run_id


def _note(state: dict[str, Any]) -> str:
    """Return the run's description: the outcome in a sentence, as the MLflow UI shows it."""
    return (
        f"Rollout of version {state['canary_version']} against stable version "
        f"{state.get('stable_version') or '?'}: **{state['status']}**. {state.get('message', '')}"
    )


def _artifacts(state: dict[str, Any], folder: Path) -> list[Path]:
    """Write the state, and the plots when matplotlib is there (it comes with mlflow)."""
    written = [folder / "rollout.json"]
    written[0].write_text(json.dumps(state, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # mlflow-skinny: the numbers are in the metrics and the state
        return written
    gates: dict[str, list[tuple[int, float]]] = {}
    for index, entry in enumerate(state["history"]):
        for gate in entry["gates"]:
            if gate.get("value") is not None:
                gates.setdefault(gate["gate"], []).append((index + 1, float(gate["value"])))
    if gates:
        figure, axes = plt.subplots(len(gates), 1, figsize=(7, 2.2 * len(gates)), squeeze=False)
        for axis, (name, points) in zip(axes[:, 0], sorted(gates.items()), strict=True):
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o")
            axis.set_title(name, fontsize=9)
            axis.set_xlabel("window")
        figure.tight_layout()
        written.append(folder / "gates.png")
        figure.savefig(written[-1], dpi=90)
        plt.close(figure)
    panels = [("error_share", "5xx share"), ("p99_s", "p99 latency (s)"),
              ("p50_s", "p50 latency (s)"), ("label_error", "labelled rows: wrong share or"
                                                            " mean |error|")]  # fmt: skip
    series = {
        (key, variant): [
            (index + 1, float(entry["variants"][variant][key]))
            for index, entry in enumerate(state["history"])
            if (entry.get("variants") or {}).get(variant, {}).get(key) is not None
        ]
        for key, _ in panels for variant in ("stable", "canary")
    }  # fmt: skip
    shown = [(key, title) for key, title in panels
             if series[(key, "stable")] or series[(key, "canary")]]  # fmt: skip
    if shown:
        figure, axes = plt.subplots(len(shown), 1, figsize=(7, 2.2 * len(shown)), squeeze=False)
        for axis, (key, title) in zip(axes[:, 0], shown, strict=True):
            for variant in ("stable", "canary"):
                points = series[(key, variant)]
                axis.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                          label=variant)  # fmt: skip
            axis.set_title(f"{title}, per window", fontsize=9)
            axis.set_xlabel("window")
            axis.legend(fontsize=8)
        figure.tight_layout()
        written.append(folder / "variants.png")
        figure.savefig(written[-1], dpi=90)
        plt.close(figure)
    outputs = state.get("evidence", {}).get("outputs", {})
    if outputs:
        figure, axes = plt.subplots(len(outputs), 1, figsize=(7, 2.6 * len(outputs)),
                                    squeeze=False)  # fmt: skip
        for axis, (name, counts) in zip(axes[:, 0], sorted(outputs.items()), strict=True):
            categories = ordered(counts["stable"].keys() | counts["canary"].keys())
            for offset, variant in ((-0.2, "stable"), (0.2, "canary")):
                total = sum(counts[variant].values()) or 1.0
                shares = [counts[variant].get(c, 0.0) / total for c in categories]
                axis.bar([i + offset for i in range(len(categories))], shares, width=0.4,
                         label=variant)  # fmt: skip
            axis.set_xticks(range(len(categories)), categories, fontsize=7, rotation=45)
            axis.set_title(f"{name}: share of predictions per bucket or class", fontsize=9)
            axis.legend(fontsize=8)
        figure.tight_layout()
        written.append(folder / "predictions.png")
        figure.savefig(written[-1], dpi=90)
        plt.close(figure)
    return written
