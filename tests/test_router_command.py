"""`mlcanary router` as a real process: starts fast, refuses a bad file, imports no mlflow."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from router.config import RoutingConfig, write_routing_file
from tests.helpers import command_environment, free_port, run_mlcanary


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


def test_the_router_starts_in_well_under_a_second_without_mlflow(tmp_path: Path) -> None:
    """Started as a process, the router answers /ping quickly and never loads mlflow."""
    path = tmp_path / "routing.yaml"
    write_routing_file(path, _config())
    port = free_port()
    code = (
        "import sys, runpy; sys.argv = ['mlcanary', 'router', '--config', sys.argv[1], "
        "'--port', sys.argv[2]]; import atexit; "
        "atexit.register(lambda: print('mlflow' in sys.modules and 'MLFLOW' or 'CLEAN')); "
        "runpy.run_module('mlcanary', run_name='__main__')"
    )
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(path), str(port)],
        env=command_environment(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while time.monotonic() - started < 10:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1):
                    break
            except OSError:
                time.sleep(0.02)
        took = time.monotonic() - started
    finally:
        process.terminate()
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "CLEAN" in out
    assert took < 1.5  # Python start-up included; the router itself adds little
