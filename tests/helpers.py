"""Small helpers shared by the tests: free ports, running the real command, registry reads."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient

from common.settings import RegistrySettings


def free_port() -> int:
    """Return a port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def command_environment(state: Path, **extra: str) -> dict[str, str]:
    """Return an environment for the real `mlcanary` command with its own state folder."""
    environment = {
        key: value
        for key, value in os.environ.items()
        # mlflow.set_tracking_uri/set_registry_uri in this process export these: drop them.
        if key not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "DEFAULT_MODEL_NAME")
    }
    environment["MLCANARY_HOME"] = str(state)
    environment.update(extra)
    return environment


def run_mlcanary(
    *args: str, state: Path, timeout: float = 120, **extra: str
) -> subprocess.CompletedProcess[str]:
    """Run `python -m mlcanary ARGS` to completion and return what it printed."""
    return subprocess.run(
        [sys.executable, "-m", "mlcanary", *args],
        env=command_environment(state, **extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def registry_snapshot(settings: RegistrySettings) -> tuple[list[tuple[str, list[str]]], int]:
    """Return the model's (version, aliases) pairs and how many runs were logged in all."""
    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    versions = sorted(
        int(v.version) for v in client.search_model_versions(f"name = '{settings.model_name}'")
    )
    aliases = client.get_registered_model(settings.model_name).aliases if versions else {}
    described = [
        (str(v), sorted(a for a, target in aliases.items() if int(target) == v)) for v in versions
    ]
    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiment_ids) if experiment_ids else []
    return described, len(runs)


def point_mlflow_at(settings: RegistrySettings) -> None:
    """Make `models:/` URIs in this process resolve against the given registry."""
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)


def wait_for_url(
    url: str,
    *,
    process: subprocess.Popen[Any] | None = None,
    log: Path | None = None,
    timeout: float = 60,
) -> None:
    """Wait until `url` answers 200; fail at `timeout`, or at once if `process` exits first.

    The one readiness wait of the tests: the failure names the URL and ends with the process's
    log, if it has one.
    """
    deadline = time.monotonic() + timeout

    def failure(why: str) -> AssertionError:
        tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
        return AssertionError(f"{url} {why}" + (f"\n{tail}" if tail else ""))

    while True:
        if process is not None and process.poll() is not None:
            raise failure(f"never answered: its process exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise failure(f"did not answer 200 within {timeout:g} s")
        time.sleep(0.05)


def wait_for_ping(url: str, process: subprocess.Popen[str], timeout: float = 60) -> None:
    """Wait until `url/ping` answers, failing at once if `process` exits first."""
    wait_for_url(f"{url}/ping", process=process, timeout=timeout)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {timeout} s")
        time.sleep(0.05)
