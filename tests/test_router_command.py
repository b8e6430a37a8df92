"""`mlcanary router` as a real process: refuses a bad file, serves without importing mlflow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from router.config import RoutingConfig, write_routing_file
from tests.helpers import command_environment, free_port, run_mlcanary, wait_for_ping


def _config() -> RoutingConfig:
    return RoutingConfig.model_validate(
        {"model": "M", "stable": {"url": "http://127.0.0.1:9", "version": "1"}}
    )


def test_the_router_refuses_an_invalid_file_naming_the_field(tmp_path: Path) -> None:
    """An invalid routing file at start: exit 1 and one line naming field and problem."""
    path = tmp_path / "routing.yaml"
    path.write_text("model: M\nstable: {url: 'http://127.0.0.1:9', version: '1'}\nweight: 5\n")
    done = run_mlcanary("router", "--config", str(path), "--port", "0", state=tmp_path)
    assert done.returncode == 1
    assert f"{path}: weight: Extra inputs are not permitted" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_router_serves_without_loading_mlflow(tmp_path: Path) -> None:
    """Started as a process, the router answers /ping and never loads mlflow (start-up time is
    measured in bench/up_time.py, not bounded here)."""
    path = tmp_path / "routing.yaml"
    write_routing_file(path, _config())
    port = free_port()
    code = (
        "import sys, runpy; sys.argv = ['mlcanary', 'router', '--config', sys.argv[1], "
        "'--port', sys.argv[2]]; import atexit; "
        "atexit.register(lambda: print('mlflow' in sys.modules and 'MLFLOW' or 'CLEAN')); "
        "runpy.run_module('mlcanary', run_name='__main__')"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(path), str(port)],
        env=command_environment(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_ping(f"http://127.0.0.1:{port}", process)
    finally:
        process.terminate()
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "CLEAN" in out
