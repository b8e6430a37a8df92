"""Shared fixtures: one real sqlite registry, trained once per session."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

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
    """Train and register two versions once; tests must not change this registry."""
    state = tmp_path_factory.mktemp("registry")
    settings = RegistrySettings.embedded_in(state)
    champion = train_and_register(TrainOptions(kind=ModelKind.linear), settings)
    challenger = train_and_register(TrainOptions(kind=ModelKind.random_forest), settings)
    return TrainedRegistry(state, settings, champion, challenger)


@pytest.fixture
def empty_registry(tmp_path: Path) -> RegistrySettings:
    """A registry of this test's own, with nothing in it yet."""
    return RegistrySettings.embedded_in(tmp_path / "state")
