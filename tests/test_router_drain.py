"""`mlcanary router` as a process on SIGTERM (a rolling restart): it stops accepting, closes
idle connections at once, answers every request already received, then exits."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from common.predictionlog import read_predictions
from contracts.routing import RoutingConfig, write_routing_file
from tests.helpers import command_environment, free_port
from tests.routers import wait_until
from tests.test_router_http import PLANES, Upstream, closed, post, read_answer


@asynccontextmanager
async def started_router(
    tmp_path: Path, upstream_url: str, plane: str, *extra: str, log_percent: float = 0
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """Run `mlcanary router` before `upstream_url` until it listens; kill it on the way out."""
    path = tmp_path / "routing.yaml"
    write_routing_file(
        path,
        RoutingConfig.model_validate(
            {"model": "M", "stable": {"url": upstream_url, "version": "1"},
             "log": {"percent": log_percent}}
        ),
    )  # fmt: skip
    port = free_port()
    with (tmp_path / "router.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "mlcanary", "router", "--config", str(path)),
            *("--port", str(port), "--data-plane", plane, *extra),
            env=command_environment(tmp_path),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        await wait_until(lambda: _accepts(port) or process.returncode is not None, "listening")
        assert process.returncode is None, (tmp_path / "router.log").read_text()
        yield process, port
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


@pytest.fixture
async def gated() -> AsyncIterator[tuple[Upstream, str]]:
    """An upstream whose requests wait at a gate the test opens."""
    upstream = Upstream(gate=asyncio.Event())
    server = TestServer(upstream.app(), host="127.0.0.1")
    await server.start_server()
    try:
        yield upstream, str(server.make_url("")).rstrip("/")
    finally:
        upstream.gate.set()  # type: ignore[union-attr]
        await server.close()


async def _exited(process: asyncio.subprocess.Process) -> int:
    return await asyncio.wait_for(process.wait(), 60)


@pytest.mark.parametrize("plane", PLANES)
async def test_sigterm_answers_requests_in_flight_and_closes_idle_connections(
    plane: str, tmp_path: Path, gated: tuple[Upstream, str]
) -> None:
    """Five requests in flight and three idle clients at SIGTERM: the idle ones are closed at
    once, new connections refused, the five answered 200 (with Connection: close), exit 0."""
    upstream, url = gated
    async with started_router(tmp_path, url, plane, "--drain-timeout", "30") as (process, port):
        idle = []
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /ping HTTP/1.1\r\nHost: r\r\n\r\n")
            assert (await read_answer(reader)).status == 200
            idle.append((reader, writer))
        busy = []
        for _ in range(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(post())
            busy.append((asyncio.create_task(read_answer(reader)), reader, writer))
        await wait_until(lambda: upstream.in_flight == 5, "five requests at the upstream")

        process.send_signal(signal.SIGTERM)
        assert all(await asyncio.gather(*(closed(reader) for reader, _ in idle)))
        assert upstream.in_flight == 5  # closed while the five were still being served
        await wait_until(lambda: not _accepts(port), "new connections refused")
        upstream.gate.set()  # type: ignore[union-attr]
        answers = await asyncio.gather(*(task for task, _, _ in busy))
        assert [answer.status for answer in answers] == [200] * 5
        assert all(answer.header("Connection") == ["close"] for answer in answers)
        assert all(await asyncio.gather(*(closed(reader) for _, reader, _ in busy)))
        assert await _exited(process) == 0
        for _, writer in idle:
            writer.close()
        for _, _, writer in busy:
            writer.close()


@pytest.mark.parametrize("plane", PLANES)
async def test_sigterm_gives_up_at_the_drain_timeout(
    plane: str, tmp_path: Path, gated: tuple[Upstream, str]
) -> None:
    """A request still at the upstream when --drain-timeout passes does not hold the exit: the
    router exits 0 and closes the connection without an answer (the upstream never gave one,
    and its 30 s timeout would have been far later)."""
    upstream, url = gated
    async with started_router(tmp_path, url, plane, "--drain-timeout", "1") as (process, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post())
        await wait_until(lambda: upstream.in_flight == 1, "the request at the upstream")
        process.send_signal(signal.SIGTERM)
        assert await _exited(process) == 0
        assert await closed(reader)  # no answer came: the exit did not wait for one
        writer.close()


def _accepts(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("plane", PLANES)
async def test_the_prediction_log_keeps_every_answer_across_a_rolling_restart(
    plane: str, tmp_path: Path, gated: tuple[Upstream, str]
) -> None:
    """Guaranteed: every answer sent before SIGTERM, those answered while draining included,
    is recorded when the router exits; the next router appends to the same folder."""
    upstream, url = gated
    folder = tmp_path / "predictions"
    options = ("--prediction-log", str(folder))
    answered: list[str] = []
    async with started_router(tmp_path, url, plane, *options, log_percent=100) as (process, port):
        busy = []
        for _ in range(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(post())
            busy.append((asyncio.create_task(read_answer(reader)), writer))
        await wait_until(lambda: upstream.in_flight == 5, "five requests at the upstream")
        process.send_signal(signal.SIGTERM)
        upstream.gate.set()  # type: ignore[union-attr]
        for task, writer in busy:
            answer = await task
            assert answer.status == 200
            answered += answer.header("X-Request-Id")
            writer.close()
        assert await _exited(process) == 0
    assert sorted(r.request_id for r in read_predictions(folder)) == sorted(answered)
    async with started_router(tmp_path, url, plane, *options, log_percent=100) as (process, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(3):
            writer.write(post())
            answered += (await read_answer(reader)).header("X-Request-Id")
        writer.close()
        process.send_signal(signal.SIGTERM)
        assert await _exited(process) == 0
    assert sorted(r.request_id for r in read_predictions(folder)) == sorted(answered)
    assert len(answered) == 8
