"""Settings from the environment: read once per process, one error wording wherever a bad value
is met (the CLI, the controller, the router's original admin path)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from common.settings import SettingsError, read_settings
from tests.helpers import command_environment, free_port, run_mlcanary, wait_for_ping

BAD = "abc"
SAID = f"invalid settings: CANARY_PROBABILITY: must be a number from 0 to 1, got '{BAD}'"


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        (
            "CANARY_PROBABILITY",
            "1.5",
            "CANARY_PROBABILITY: must be a number from 0 to 1, got '1.5'",
        ),
        ("DEFAULT_MODEL_VERSION", "v2", "must be a version number or latest, got 'v2'"),
        ("DEFAULT_MODEL_NAME", "", None),  # empty is unset: the default name
    ],
)
def test_each_variable_is_validated_and_named(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, said: str | None
) -> None:
    monkeypatch.setenv(variable, value)
    if said is None:
        assert read_settings().model_name == "StudentExamPredictor"
        return
    with pytest.raises(SettingsError, match=r"^invalid settings: ") as raised:
        read_settings().canary_percent()
    assert said in str(raised.value)


def test_a_bad_canary_probability_is_one_error_in_the_cli_the_controller_and_update_model(
    tmp_path: Path,
) -> None:
    """`up` and `controller` stop at start with it (exit 2, nothing started); the router, which
    needs it only to weight a new canary, serves and answers `/update-model` with it."""
    state = tmp_path / "state"
    up = run_mlcanary("up", "--mlflow-port", str(free_port()), state=state,
                      CANARY_PROBABILITY=BAD)  # fmt: skip
    assert (up.returncode, up.stderr.strip()) == (2, f"error: {SAID}")
    assert not (state / "mlflow.db").exists()
    controller = run_mlcanary("controller", "--port", str(free_port()), state=state,
                              CANARY_PROBABILITY=BAD)  # fmt: skip
    assert (controller.returncode, controller.stderr.strip()) == (2, f"error: {SAID}")

    routing = tmp_path / "routing.yaml"
    routing.write_text("model: StudentExamPredictor\n"
                       "stable: {url: 'http://127.0.0.1:1', version: '1'}\n")  # fmt: skip
    port = free_port()
    router = subprocess.Popen(
        [sys.executable, "-m", "mlcanary", "router", "--config", str(routing),
         "--port", str(port), "--controller", "http://127.0.0.1:1"],
        env=command_environment(state, CANARY_PROBABILITY=BAD),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        wait_for_ping(f"http://127.0.0.1:{port}", router)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/update-model", method="POST",
            data=json.dumps({"model_name": "StudentExamPredictor", "model_version": "2"}).encode(),
            headers={"Content-Type": "application/json", "Authorization": "Bearer token"},
        )  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as answered:
            urllib.request.urlopen(request, timeout=30)
        with answered.value as error:
            assert error.code == 500
            assert json.loads(error.read()) == {"error_code": "INTERNAL_ERROR", "message": SAID}
    finally:
        router.terminate()
        router.wait(timeout=60)
