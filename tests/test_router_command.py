"""`mlcanary router` as a real process: refuses a bad file, serves without importing mlflow,
and with `--workers` has each process confirm a change."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from common.supervision import ensure_port_free, process_table
from contracts.routing import RoutingConfig, write_routing_file
from controller.errors import ControllerError
from controller.routers import wait_for_routers
from router.settings import RouterSettings
from tests.helpers import command_environment, free_port, run_mlcanary, wait_for_ping, wait_until


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


def _workers(pid: int) -> list[int]:
    """Pids of the router processes started by the router `pid` (not its guardian)."""
    return [
        stat.pid
        for stat in process_table()
        if stat.parent == pid and b"router" in Path(f"/proc/{stat.pid}/cmdline").read_bytes()
    ]


async def test_every_process_of_a_workers_router_must_confirm_a_change(tmp_path: Path) -> None:
    """`--workers 2`: with one process stopped (SIGSTOP), a change is not confirmed (the error
    names the router and how many of its 2 processes did); once it runs again, both confirm."""
    path = tmp_path / "routing.yaml"
    write_routing_file(path, _config())
    port = free_port()
    router = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(  # noqa: ASYNC220 (wait_for_ping polls it from a thread)
        [sys.executable, "-m", "mlcanary", "router", "--config", str(path), "--port", str(port),
         "--workers", "2"],
        env=command_environment(tmp_path),
    )  # fmt: skip
    stopped: list[int] = []
    try:
        await asyncio.to_thread(wait_for_ping, router, process)
        async with aiohttp.ClientSession() as session:
            first = write_routing_file(path, _config())  # the same file: both processes have it
            await wait_for_routers(session, [router], first, within=60)  # both are up
            stopped = _workers(process.pid)
            assert len(stopped) == 1, stopped
            os.kill(stopped[0], signal.SIGSTOP)
            moved = _config().model_copy(update={"model": "Moved"})
            version = write_routing_file(path, moved)
            # Every read may reach the stopped process (each costs the 1 s read timeout): then
            # no process answered at all, which must not confirm either.
            with pytest.raises(ControllerError, match=r"\(([01] of its 2 processes|no answer)\)"):
                await wait_for_routers(session, [router], version, within=3)
            os.kill(stopped[0], signal.SIGCONT)
            await wait_for_routers(session, [router], version, within=60)
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        process.terminate()
        process.wait(timeout=60)


def test_workers_get_every_setting_and_stop_with_a_sigkilled_router(tmp_path: Path) -> None:
    """A worker runs with all of its parent's settings (options and environment alike); SIGKILL
    gives the router no chance to stop its workers: its guardian does, and the port is free."""
    path = tmp_path / "routing.yaml"
    write_routing_file(path, _config())
    port = free_port()
    options = {
        "--timeout": "7", "--max-body-mb": "3", "--drain-timeout": "4", "--header-timeout": "5",
        "--keepalive-timeout": "6", "--body-timeout": "8", "--max-connections": "99",
        "--upstream-connections": "9", "--upstream-keepalive-timeout": "2",
        "--prediction-log-upload-interval": "3",
    }  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "mlcanary", "router", "--config", str(path), "--port", str(port),
         "--workers", "2", *(item for pair in options.items() for item in pair)],
        env=command_environment(tmp_path, MLCANARY_CONTROLLER_URL="http://127.0.0.1:1"),
    )  # fmt: skip
    try:
        wait_for_ping(f"http://127.0.0.1:{port}", process)
        wait_until(lambda: len(_workers(process.pid)) == 1, "the second worker started")
        (worker,) = _workers(process.pid)
        argv = Path(f"/proc/{worker}/cmdline").read_bytes().decode().split("\0")
        given = RouterSettings.model_validate_json(argv[argv.index("--settings-json") + 1])
        expected = RouterSettings(
            config_path=path, port=port, total_timeout_s=7, max_body_bytes=3 * 1024 * 1024,
            drain_timeout_s=4, header_timeout_s=5, keepalive_timeout_s=6, body_timeout_s=8,
            max_connections=99, upstream_connections=9, upstream_keepalive_s=2, processes=2,
            controller_url="http://127.0.0.1:1", prediction_log=str(tmp_path / "predictions"),
            prediction_log_spool=tmp_path / "predictions-spool", prediction_log_upload_s=3,
            # Made by the first process: one name and one folder of metric values for all.
            shared_metrics=given.shared_metrics, instance_id=given.instance_id,
        )  # fmt: skip
        assert given == expected
        assert given.shared_metrics is not None and given.shared_metrics.is_dir()
        assert given.instance_id
    finally:
        process.kill()
        process.wait(timeout=60)
    wait_until(lambda: not Path(f"/proc/{worker}").exists(), "the worker stopped")
    ensure_port_free("127.0.0.1", port, "the router's port")
