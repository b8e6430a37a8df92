"""The real `mlcanary` command: training output, bad input, and `up`."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from common.supervision import ensure_port_free
from tests.conftest import TrainedRegistry
from tests.helpers import (
    command_environment,
    free_port,
    registry_snapshot,
    run_mlcanary,
    wait_for_url,
    wait_until,
)
from training.dataset import COLUMNS

pytestmark = pytest.mark.slow  # real MLflow, model servers or whole systems


def test_help_reads_well_and_imports_no_mlflow() -> None:
    """`--help` lists the commands; loading the command line imports no mlflow, sklearn, numpy."""
    code = (
        "import sys, mlcanary.cli; "
        "print(sorted({'mlflow', 'sklearn', 'numpy', 'pandas'} & set(sys.modules)))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert loaded.stdout.strip() == "[]"
    shown = subprocess.run(
        [sys.executable, "-m", "mlcanary", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("train", "generate-data", "up"):
        assert command in shown.stdout


def test_train_prints_json_for_scripts(tmp_path: Path) -> None:
    """`train --json` prints only JSON on stdout: version, alias, metrics, registry."""
    done = run_mlcanary("train", "--model", "linear", "--json", state=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["version"] == "1"
    assert result["alias"] == "champion"
    assert result["model_uri"] == "models:/StudentExamPredictor/1"
    assert set(result["metrics"]) == {"rmse", "mae", "r2"}
    assert result["tracking_uri"] == f"sqlite:///{tmp_path}/mlflow.db"


def test_train_honours_the_original_model_name_setting(tmp_path: Path) -> None:
    """DEFAULT_MODEL_NAME names the registered model when --name is not given."""
    done = run_mlcanary(
        "train", "--model", "linear", "--json", state=tmp_path, DEFAULT_MODEL_NAME="Exams"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["model_uri"] == "models:/Exams/1"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


HEADER = ",".join(COLUMNS)
ROWS = "".join(f"S{i:03d},6.5,7.0,90.0,85,40.1\n" for i in range(30))


@pytest.mark.parametrize(
    ("arguments", "environment", "expected"),
    [
        (["--data", "{tmp}/nothing.csv"], {}, "dataset not found"),
        (["--data", "{tmp}/bad.csv"], {}, "not valid CSV"),
        (["--data", "{tmp}/nocolumn.csv"], {}, "lacks column(s): previous_scores"),
        (["--data", "{tmp}/text.csv"], {}, "column 'sleep_hours' needs numbers"),
        (["--model", "xgboost"], {}, "Invalid value for '--model'"),
        (["--test-size", "1.5"], {}, "test_size must be between 0 and 1"),
        ([], {"MLFLOW_TRACKING_URI": "http://127.0.0.1:{closed}"}, "cannot be reached"),
        (["--alias", "x", "--no-alias"], {}, "exclude each other"),
    ],
    ids=[
        "missing-csv",
        "malformed",
        "missing-column",
        "non-numeric",
        "unknown-model",
        "bad-split",
        "unreachable",
        "alias-conflict",
    ],
)
def test_bad_input_is_one_clear_error_and_changes_nothing(
    tmp_path: Path,
    trained_registry: TrainedRegistry,
    arguments: list[str],
    environment: dict[str, str],
    expected: str,
) -> None:
    """Each bad input: non-zero exit, the problem named, no traceback, registry unchanged."""
    _write(tmp_path / "bad.csv", f'{HEADER}\n"S1,1,2,3,4,5\n')
    _write(tmp_path / "nocolumn.csv", HEADER.replace(",previous_scores", "") + "\n")
    _write(tmp_path / "text.csv", f"{HEADER}\n{ROWS}S999,6.5,lots,90.0,85,40.1\n")
    state = trained_registry.state
    settings = trained_registry.settings
    before = registry_snapshot(settings)
    values = {"tmp": str(tmp_path), "closed": str(free_port())}
    done = run_mlcanary(
        "train",
        *(argument.format(**values) for argument in arguments),
        state=state,
        **{key: value.format(**values) for key, value in environment.items()},
    )
    assert done.returncode != 0
    assert expected in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert registry_snapshot(settings) == before


def test_bootstrap_says_once_that_it_waits_for_the_registry_then_fails_in_one_line(
    tmp_path: Path,
) -> None:
    """A registry that never comes up: one line when the wait starts, one error line at its end."""
    uri = f"http://127.0.0.1:{free_port()}"
    done = run_mlcanary("bootstrap", "--wait", "1", state=tmp_path, MLFLOW_TRACKING_URI=uri)
    assert done.returncode == 1
    said = [line for line in done.stderr.splitlines() if uri in line]
    reason = f"tracking server {uri} cannot be reached: [Errno 111] Connection refused"
    assert said == [f"{reason}; retrying for up to 1 s", f"error: {reason}"]
    assert "Traceback" not in done.stderr + done.stdout


def _children_of_state(state: Path, *, mentioning: str = "") -> list[int]:
    """Return pids of live processes whose command line or environment names the state folder
    (model servers only have it in their environment), and whose command line has `mentioning`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environment = (entry / "environ").read_bytes().decode(errors="replace")
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue  # exited, not yet reaped
        except OSError:
            continue
        if (str(state) in command or str(state) in environment) and mentioning in command:
            found.append(int(entry.name))
    return found


class RunningUp:
    """`mlcanary up` as a child process, its stdout collected by a thread."""

    def __init__(self, state: Path, port: int) -> None:
        self.router_port, self.controller_port = free_port(), free_port()
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "mlcanary", "up", "--mlflow-port", str(port)),
                *("--port", str(self.router_port), "--controller-port", str(self.controller_port)),
            ],
            env=command_environment(state),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            if "Press Ctrl-C to stop" in line:
                self.ready.set()

    def wait_until_up(self, timeout: float = 180) -> None:
        """Wait for `up` to say it is up; fail with its stderr if it exits first."""
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError(self.process.communicate()[1])

    def stop(self) -> tuple[int, str, str]:
        """Send SIGTERM; return exit code, everything printed on stdout, and stderr."""
        self.process.send_signal(signal.SIGTERM)
        _, err = self.process.communicate(timeout=60)
        self.reader.join(timeout=10)
        return self.process.returncode, "".join(self.lines), err


def _logs(state: Path) -> dict[str, str]:
    """The last lines of each log `up` keeps, for a failure's message."""
    return {
        log.name: "".join(log.read_text(errors="replace").splitlines(keepends=True)[-20:])
        for log in sorted((state / "logs").glob("*.log"))
    }


def _registered_through_ui(port: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/api/2.0/mlflow/registered-models/get?name=StudentExamPredictor"
    with urllib.request.urlopen(url, timeout=10) as answer:
        model: dict[str, Any] = json.loads(answer.read())["registered_model"]
        return model


def test_up_trains_once_serves_the_ui_and_stops_cleanly(tmp_path: Path) -> None:
    """`up` registers champion and challenger, serves MLflow, stops all on SIGTERM; reuses state."""
    state = tmp_path / "state"
    port = free_port()
    first = RunningUp(state, port)
    try:
        first.wait_until_up()
        model = _registered_through_ui(port)
        aliases = {alias["alias"]: alias["version"] for alias in model["aliases"]}
        assert aliases == {"champion": "1", "challenger": "2"}
        router = f"http://127.0.0.1:{first.router_port}"
        sampled = run_mlcanary(
            "predict", "--count", "30", "--router", router, "--json", state=state
        )
        assert sampled.returncode == 0, sampled.stderr
        answers = json.loads(sampled.stdout)
        assert {answer["status"] for answer in answers} == {200}, (answers, _logs(state))
        assert {answer["version"] for answer in answers} <= {"1", "2"}
        # The same through the Open Inference Protocol: `up`'s servers speak both.
        v2 = run_mlcanary(
            "predict", "--protocol", "v2", "--count", "10", "--router", router, "--json",
            state=state,
        )  # fmt: skip
        assert v2.returncode == 0, v2.stderr
        v2_answers = json.loads(v2.stdout)
        assert {answer["status"] for answer in v2_answers} == {200}, v2_answers
        assert all(float(answer["prediction"]) > 0 for answer in v2_answers), v2_answers
        (router_pid,) = _children_of_state(state, mentioning=" router --config ")
        os.kill(router_pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while not _children_of_state(state, mentioning=" router --config "):
            assert time.monotonic() < deadline, "the router was not restarted"
            time.sleep(0.2)
        wait_for_url(f"{router}/ping")  # the restarted router answers
        with urllib.request.urlopen(f"{router}/model-info", timeout=10) as answer:
            info = json.loads(answer.read())
        assert info["available_models"][0]["versions"] == ["1", "2"], info
        controller = f"http://127.0.0.1:{first.controller_port}"
        with urllib.request.urlopen(f"{controller}/", timeout=10) as answer:
            assert b"<title>mlcanary</title>" in answer.read()  # the operator page
        promoted = run_mlcanary(
            "promote", "--reason", "test", "--controller", controller, state=state
        )
        assert promoted.returncode == 0, promoted.stderr
        assert "stable v2" in promoted.stdout
        after = json.loads(
            run_mlcanary(
                "predict", "--count", "10", "--router", router, "--json", state=state
            ).stdout
        )
        assert {(answer["variant"], answer["version"]) for answer in after} == {("stable", "2")}
        trained_via_server = run_mlcanary(
            "train",
            "--model",
            "linear",
            "--json",
            state=tmp_path / "client",
            MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}",
        )
        assert trained_via_server.returncode == 0, trained_via_server.stderr
        assert json.loads(trained_via_server.stdout)["version"] == "3"
    finally:
        code, out, err = first.stop()
    assert code == 0, err
    assert "trained models:/StudentExamPredictor/1" in out
    assert f"http://127.0.0.1:{port}" in out
    assert "admin token" in out
    shown = out[out.index("mlcanary is up") :]
    first_url = next(line for line in shown.splitlines() if "http://" in line)
    assert "operator page" in first_url and f":{first.controller_port}/" in first_url
    assert "router exited" in err and "restarting it" in err
    assert _children_of_state(state) == []

    hint = next(line for line in out.splitlines() if line.endswith(" predict --count 20"))
    typed = shlex.split(hint.removesuffix(" predict --count 20"))
    assert subprocess.run([*typed, "--help"], capture_output=True, check=False).returncode == 0

    second = RunningUp(state, port)
    try:
        second.wait_until_up()
        assert "trained" not in "".join(second.lines)  # the registry was reused
        assert "version: '2'" in (state / "routing.yaml").read_text()  # the promoted split
    finally:
        second.process.kill()  # SIGKILL: no clean-up of its own; its guardian stops the rest
        second.process.communicate(timeout=60)
    wait_until(lambda: _children_of_state(state) == [], "every child of a SIGKILLed up gone")
    for taken in (port, second.router_port, second.controller_port):
        ensure_port_free("127.0.0.1", taken, f"port {taken} after a SIGKILLed up")


def test_up_names_a_port_that_is_taken(tmp_path: Path) -> None:
    """A busy MLflow port is a one-line error naming it, before anything is trained."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_mlcanary("up", "--mlflow-port", str(port), state=tmp_path / "state")
    assert done.returncode == 1
    assert f"127.0.0.1:{port}" in done.stderr
    assert "MLflow server" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "state" / "mlflow.db").exists()
