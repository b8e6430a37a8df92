"""`mlcanary serve-model` as a real process: pinning, failing fast, graceful shutdown."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import requests

from common.settings import RegistrySettings
from tests.conftest import TrainedRegistry
from tests.helpers import free_port, run_mlcanary
from tests.servers import start_model_server
from training.pipelines import ModelKind
from training.train import TrainOptions, train_and_register

pytestmark = pytest.mark.slow  # real MLflow, model servers or whole systems

ROW = {"hours_studied": 6.5, "sleep_hours": 7.0, "attendance_percent": 90.0, "previous_scores": 85}


def test_an_alias_is_pinned_to_its_version_at_start(
    empty_registry: RegistrySettings, tmp_path: Path
) -> None:
    """Started on @challenger (v2), the server stays on v2 after the alias moves to v3."""
    for _ in range(2):
        train_and_register(TrainOptions(kind=ModelKind.linear), empty_registry)
    server = start_model_server(
        "models:/StudentExamPredictor@challenger",
        empty_registry.tracking_uri,
        tmp_path / "server.log",
    )
    try:
        server.wait_healthy()
        moved = train_and_register(TrainOptions(kind=ModelKind.linear), empty_registry)
        assert moved.alias == "challenger" and moved.version == "3"
        metadata = requests.get(f"{server.url}/metadata", timeout=10).json()
        answer = requests.post(
            f"{server.url}/invocations", json={"dataframe_records": [ROW]}, timeout=10
        )
    finally:
        assert server.stop() == 0
    assert metadata["version"] == "2"
    assert metadata["model_uri"] == "models:/StudentExamPredictor/2"
    assert answer.headers["X-Model-Version"] == "2"


@pytest.mark.parametrize(
    ("uri", "registry", "expected"),
    [
        (
            "models:/StudentExamPredictor/99",
            "sqlite",
            "cannot resolve models:/StudentExamPredictor/99",
        ),
        ("models:/StudentExamPredictor@nobody", "sqlite", "alias nobody not found"),
        ("models:/NoSuchModel/1", "sqlite", "cannot resolve models:/NoSuchModel/1"),
        ("models:/StudentExamPredictor/1", "unreachable", "cannot resolve"),
        ("/nonexistent/model/folder", "sqlite", "cannot load /nonexistent/model/folder"),
    ],
    ids=["missing-version", "missing-alias", "missing-model", "unreachable-registry", "bad-path"],
)
def test_a_bad_uri_is_a_clear_error_within_seconds(
    trained_registry: TrainedRegistry, tmp_path: Path, uri: str, registry: str, expected: str
) -> None:
    """Unresolvable, unloadable or unreachable: one message, non-zero exit, never a hang."""
    tracking = (
        trained_registry.settings.tracking_uri
        if registry == "sqlite"
        else f"http://127.0.0.1:{free_port()}"
    )
    done = run_mlcanary(  # a hang fails at run_mlcanary's deadline
        "serve-model", uri, "--port", str(free_port()), state=tmp_path, MLFLOW_TRACKING_URI=tracking
    )
    assert done.returncode == 1, done.stderr
    assert expected.lower() in done.stderr.lower()
    assert "Traceback" not in done.stderr


def test_invalid_settings_name_the_field(tmp_path: Path) -> None:
    """A bad option value is refused before anything starts, naming the setting."""
    done = run_mlcanary("serve-model", "models:/X/1", "--max-batch-rows", "0", state=tmp_path)
    assert done.returncode == 2
    assert "max_batch_rows" in done.stderr


def test_sigterm_finishes_the_requests_in_flight(
    trained_registry: TrainedRegistry, tmp_path: Path
) -> None:
    """Slow requests already in flight when SIGTERM arrives all complete; exit code 0."""
    server = start_model_server(
        "models:/StudentExamPredictor@champion",
        trained_registry.settings.tracking_uri,
        tmp_path / "server.log",
    )
    server.wait_healthy()
    header = ",".join(ROW)
    line = ",".join(str(value) for value in ROW.values())
    body = (header + "\n" + (line + "\n") * 200_000).encode()  # CSV: MLflow's slower path
    results: list[int | str] = []

    def send() -> None:
        try:
            answer = requests.post(
                f"{server.url}/invocations",
                data=body,
                headers={"Content-Type": "text/csv"},
                timeout=120,
            )
            results.append(answer.status_code)
        except requests.RequestException as error:
            results.append(repr(error))

    senders = [threading.Thread(target=send) for _ in range(4)]
    for sender in senders:
        sender.start()
    time.sleep(0.5)  # the requests reach their handlers (no signal of it to wait on yet)
    code = server.stop(timeout=120)
    for sender in senders:
        sender.join(timeout=120)
    assert results == [200, 200, 200, 200]
    assert code == 0
