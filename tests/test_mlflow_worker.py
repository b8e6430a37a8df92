"""MLflow's worker process: the serving process holds only the fast path.

Real `mlcanary serve-model` processes on zoo models saved to folders. With a fast path on
arrays (compiled, XGBoost's, LightGBM's), the serving process never maps pandas or pyarrow;
MLflow's worker answers what the fast path does not (CSV here), is stopped when idle, started
again by the next such request (several at once start one), dies with the serving process,
and a request waiting for it at SIGTERM is still answered. Without a fast path on arrays the
model is served in one process, as before.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_until
from tests.servers import ServerProcess, start_model_server
from tests.zoo import KINDS

pytestmark = pytest.mark.slow  # real MLflow, model servers or whole systems

SHORT_IDLE, NEVER_IDLE = "0.5", "3600"
ROW = {"a": 1.0, "b": 2.0, "c": 3.0}
CSV = b"a,b,c\n1.0,2.0,3.0\n"
JSON = "application/json"


def _post(url: str, body: bytes, content_type: str) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{url}/invocations", data=body, headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _metadata(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/metadata", timeout=10) as answer:
        found: dict[str, Any] = json.loads(answer.read())
        return found


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@contextmanager
def _served(folder: Path, kind: str, idle_seconds: str = SHORT_IDLE) -> Iterator[ServerProcess]:
    KINDS[kind].save(folder / "model", True)
    server = start_model_server(
        str(folder / "model"), f"sqlite:///{folder / 'unused.db'}", folder / "server.log",
        extra=("--mlflow-idle-s", idle_seconds),
    )  # fmt: skip
    try:
        server.wait_healthy()
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        ("forest-classifier", "fast path: compiled predict"),
        ("xgboost", "fast path: XGBoost's predict"),
        ("lightgbm", "fast path: LightGBM's predict"),
    ],
)
def test_the_serving_process_holds_no_pandas_and_the_worker_answers_the_rest(
    kind: str, path: str, tmp_path: Path
) -> None:
    with _served(tmp_path, kind) as server:
        _holds_no_pandas_and_the_worker_answers_the_rest(server, path)


def _holds_no_pandas_and_the_worker_answers_the_rest(server: ServerProcess, path: str) -> None:
    url, pid = server.url, server.process.pid
    assert _metadata(url)["path"] == path
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert "numpy/_core" in maps  # extension modules show here
    assert "pandas/_libs" not in maps
    assert "libarrow" not in maps
    row = json.dumps({"dataframe_records": [ROW]}).encode()
    status, fast = _post(url, row, "application/json")
    assert status == 200
    # Idle: the worker is stopped and no child is left.
    wait_until(lambda: not _children(pid), "stopped when idle")
    assert _metadata(url)["mlflow_path"].startswith("worker process, stopped")
    # CSV needs MLflow's path: several requests at once start one worker and all are answered.
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: _post(url, CSV, "text/csv"), range(6)))
    assert answers == [(200, fast)] * 6
    assert len(_children(pid)) <= 1
    wait_until(lambda: not _children(pid), "stopped when idle again")


def test_a_killed_worker_is_started_again_and_dies_with_the_server(tmp_path: Path) -> None:
    with _served(tmp_path, "forest-classifier", NEVER_IDLE) as server:
        url, pid = server.url, server.process.pid
        [first] = _children(pid)
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: not _children(pid), "reaped")
        assert _metadata(url)["mlflow_path"].startswith("worker process, stopped")
        status, answer = _post(url, CSV, "text/csv")
        assert status == 200, answer
        [second] = _children(pid)
        assert second != first
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not _alive(second), "gone with the serving process")


def test_a_model_without_a_compiled_path_is_served_in_one_process(tmp_path: Path) -> None:
    with _served(tmp_path, "params") as server:
        metadata = _metadata(server.url)
        assert metadata["mlflow_path"] == "in process"
        assert metadata["path"] == "MLflow's path: the python_function flavor"
        wait_until(lambda: not _children(server.process.pid), "one process")
        assert _post(server.url, CSV, "text/csv")[0] == 200


def test_a_request_waiting_for_a_worker_is_answered_through_sigterm(tmp_path: Path) -> None:
    """SIGTERM while a CSV request waits for MLflow's worker to start: answered, exit 0."""
    with _served(tmp_path, "forest-classifier") as server:
        pid = server.process.pid
        wait_until(lambda: not _children(pid), "stopped when idle")
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(_post, server.url, CSV, "text/csv")
            wait_until(lambda: bool(_children(pid)), "starting a worker")
            workers = _children(pid)
            server.process.send_signal(signal.SIGTERM)
            status, body = answer.result()
        assert status == 200, body
        assert server.process.wait(timeout=60) == 0
        assert not any(_alive(worker) for worker in workers)


NOISY_MODEL = """
import os

import mlflow.pyfunc
from mlflow.models import set_model


class Noisy(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        print("a model's print")
        os.write(1, b"a library writing to its standard output\\n")
        return model_input["a"] * 2


set_model(Noisy())
"""


def test_a_model_writing_to_standard_output_does_not_break_the_worker(tmp_path: Path) -> None:
    """The worker's frames travel on what was its standard output: nothing else may write there."""
    import mlflow.pyfunc
    import pandas as pd

    code = tmp_path / "noisy.py"
    code.write_text(NOISY_MODEL)
    example = pd.DataFrame({"a": [1.0, 2.0]})
    mlflow.pyfunc.save_model(tmp_path / "model", python_model=str(code), input_example=example)
    server = start_model_server(
        str(tmp_path / "model"), f"sqlite:///{tmp_path / 'unused.db'}", tmp_path / "server.log"
    )
    try:
        server.wait_healthy()
        body = json.dumps({"dataframe_records": [{"a": 4.0}]}).encode()
        status, answer = _post(server.url, body, JSON)
        assert (status, answer) == (200, {"predictions": [{"a": 8.0}]})
    finally:
        server.stop()
    assert "a library writing to its standard output" in server.log_path.read_text()
