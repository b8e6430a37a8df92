"""Shared fixtures: one real sqlite registry, trained once per run (whatever the workers)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
from filelock import FileLock

from common.settings import RegistrySettings, system_settings
from training.pipelines import ModelKind
from training.train import TrainOptions, TrainResult, train_and_register

# No test may send mlflow's usage telemetry anywhere; child processes inherit this.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"


@pytest.fixture(autouse=True)
def settings_read_afresh() -> None:
    """Tests that set variables (monkeypatch) get them read: a process reads its settings once."""
    system_settings.cache_clear()


@dataclass(frozen=True)
class TrainedRegistry:
    """A registry under a temp folder holding a linear champion and a forest challenger."""

    state: Path
    settings: RegistrySettings
    champion: TrainResult
    challenger: TrainResult


@pytest.fixture(scope="session")
def trained_registry(tmp_path_factory: pytest.TempPathFactory) -> TrainedRegistry:
    """Train and register two versions once; tests must not change this registry.

    Under pytest-xdist every worker is a session of its own: the first to get here trains into
    the run's shared temp folder, under a file lock, and the others read what it recorded.
    """
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # this run's folder, above every worker's own
    state, record = shared / "trained-registry", shared / "trained-registry.json"
    with FileLock(shared / "trained-registry.lock"):
        if not record.exists():
            settings = RegistrySettings.embedded_in(state)
            results = [
                train_and_register(TrainOptions(kind=kind), settings)
                for kind in (ModelKind.linear, ModelKind.random_forest)
            ]
            record.write_text(json.dumps([asdict(result) for result in results]))
    champion, challenger = (
        TrainResult(**{**fields, "kind": ModelKind(fields["kind"])})
        for fields in json.loads(record.read_text())
    )
    return TrainedRegistry(state, RegistrySettings.embedded_in(state), champion, challenger)


@pytest.fixture
def empty_registry(tmp_path: Path) -> RegistrySettings:
    """A registry of this test's own, with nothing in it yet."""
    return RegistrySettings.embedded_in(tmp_path / "state")
