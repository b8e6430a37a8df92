"""A rollout window from the routers' real /metrics text: differenced per router process and
summed, or failed."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry, generate_latest

from contracts.payloads import RouterHealth
from contracts.routing import Predictions, RoutingConfig, write_routing_file
from controller.errors import ControllerError
from controller.rollout.histograms import quantile
from controller.rollout.window import Snapshot, add_exposition, take_snapshot, window_between
from router.telemetry.metrics import RouterMetrics
from tests.helpers import command_environment, free_port
from tests.routers import wait_until


def snapshot_of(*texts: str) -> Snapshot:
    snapshot = Snapshot()
    for text in texts:
        add_exposition(snapshot, text)
    return snapshot


def test_two_routers_are_summed_and_the_window_is_the_difference() -> None:
    routers = [CollectorRegistry(), CollectorRegistry()]
    metrics = [RouterMetrics.create(registry) for registry in routers]
    spec = Predictions.model_validate({"version": "1", "outputs": {
        "predictions": {"edges": [40.0, 45.0]}, "label": {"classes": ["a", "b"]},
    }})  # fmt: skip
    for m in metrics:
        m.predictions.configure(spec, "1")
        for _ in range(10):
            m.answered("stable", "1", 200, 0.002)
        m.answered("canary", "2", 200, 0.004)
    before = snapshot_of(*(generate_latest(r).decode() for r in routers))
    for m in metrics:
        for _ in range(30):
            m.answered("stable", "1", 200, 0.002)
        for _ in range(9):
            m.answered("canary", "2", 200, 0.004)
        m.answered("canary", "2", 503, 0.3)
        m.predicted("canary", {"predictions": [40.0, 41.0], "label": ["a", "c"]})
        m.shadow_delta.observe(0.5)
    after = snapshot_of(*(generate_latest(r).decode() for r in routers))
    window = window_between(before, after)
    assert (window.stable.requests, window.stable.errors) == (60, 0)
    assert (window.canary.requests, window.canary.errors) == (20, 2)
    assert window.canary.latency[-1] == (float("inf"), 20)
    assert quantile(0.5, window.canary.latency) == pytest.approx(
        0.003 + 0.001 * 10 / 18
    )  # 18 in (3, 4] ms
    assert window.canary.predictions["predictions"]["40.0"] == 2  # 40 from each router
    assert window.canary.predictions["predictions"]["45.0"] == 2  # 41 from each router
    assert window.canary.predictions["label"] == {"a": 2, "b": 0, "other": 2}
    assert (window.shadow_delta_sum, window.shadow_delta_count) == (1.0, 2)


def test_a_restarted_router_counts_from_zero() -> None:
    registry = CollectorRegistry()
    metrics = RouterMetrics.create(registry)
    for _ in range(50):
        metrics.answered("canary", "2", 200, 0.002)
    before = snapshot_of(generate_latest(registry).decode())
    fresh = CollectorRegistry()
    restarted = RouterMetrics.create(fresh)
    for _ in range(5):
        restarted.answered("canary", "2", 200, 0.002)
    window = window_between(before, snapshot_of(generate_latest(fresh).decode()))
    assert window.canary.requests == 5


def test_one_of_two_routers_restarting_mid_window_is_differenced_on_its_own() -> None:
    """Router A serves 100 canary requests in the window; router B restarts in it and serves 10,
    one of them a 503. Summed before differencing, the sum dropped (600 -> 610 read as 10 new
    requests, 10% errors: a false rollback); per process it is 110 requests, 1 error."""
    first, second = CollectorRegistry(), CollectorRegistry()
    a, b = RouterMetrics.create(first), RouterMetrics.create(second)
    for _ in range(500):
        a.answered("canary", "2", 200, 0.002)
    for _ in range(100):
        b.answered("canary", "2", 200, 0.002)
    before = snapshot_of(generate_latest(first).decode(), generate_latest(second).decode())
    for _ in range(100):
        a.answered("canary", "2", 200, 0.002)
    restarted_registry = CollectorRegistry()
    restarted = RouterMetrics.create(restarted_registry)
    for _ in range(9):
        restarted.answered("canary", "2", 200, 0.002)
    restarted.answered("canary", "2", 503, 0.002)
    after = snapshot_of(
        generate_latest(first).decode(), generate_latest(restarted_registry).decode()
    )
    window = window_between(before, after)
    assert (window.canary.requests, window.canary.errors) == (110, 1)
    assert window.canary.latency[-1] == (float("inf"), 110)


def test_the_same_router_read_twice_counts_once() -> None:
    """Two addresses of one router process (its instance id) are one process's traffic."""
    registry = CollectorRegistry()
    metrics = RouterMetrics.create(registry)
    before = snapshot_of(generate_latest(registry).decode())
    for _ in range(7):
        metrics.answered("stable", "1", 200, 0.002)
    text = generate_latest(registry).decode()
    assert window_between(before, snapshot_of(text, text)).stable.requests == 7


def test_each_router_process_names_itself_differently() -> None:
    """Two processes (or one restarted) never share an instance id."""
    names = set()
    for _ in range(2):
        registry = CollectorRegistry()
        RouterMetrics.create(registry)
        names |= set(snapshot_of(generate_latest(registry).decode()).instances)
    assert len(names) == 2


async def test_every_process_of_a_router_with_workers_is_counted(tmp_path: Path) -> None:
    """`mlcanary router --workers 2`: 40 requests on new connections spread over both processes
    sharing the port; one read of the address, whichever process answers, counts all 40."""

    async def invocations(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"predictions": [1.0]})

    async def ping(_request: web.Request) -> web.Response:
        return web.Response(text="\n")

    upstream_app = web.Application()
    upstream_app.router.add_post("/invocations", invocations)
    upstream_app.router.add_get("/ping", ping)
    upstream = TestServer(upstream_app, host="127.0.0.1")
    await upstream.start_server()
    path = tmp_path / "routing.yaml"
    url = str(upstream.make_url("")).rstrip("/")
    write_routing_file(
        path, RoutingConfig.model_validate({"model": "M", "stable": {"url": url, "version": "1"}})
    )
    port = free_port()
    router = f"http://127.0.0.1:{port}"
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "mlcanary", "router", "--config", str(path)),
        *("--port", str(port), "--workers", "2"),
        env=command_environment(tmp_path),
    )
    try:
        async with aiohttp.ClientSession() as session:
            await wait_until(
                lambda: _both_processes_answer(session, router), "both router processes up", 60
            )
            for _ in range(40):
                async with session.post(
                    f"{router}/invocations", data=b'{"inputs": [[1.0]]}',
                    headers={"Content-Type": "application/json", "Connection": "close"},
                ) as answer:  # fmt: skip
                    assert answer.status == 200
            snapshot = await take_snapshot(session, [router])
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 60)
        await upstream.close()
    (counted,) = snapshot.instances.values()
    assert counted.variants["stable"].requests == 40


async def _both_processes_answer(session: aiohttp.ClientSession, router: str) -> bool:
    """Whether 20 reads of /health over new connections reached two router processes."""
    names = set()
    for _ in range(20):
        try:
            async with session.get(f"{router}/health", headers={"Connection": "close"}) as answer:
                names.add(RouterHealth.model_validate_json(await answer.read()).instance_id)
        except aiohttp.ClientError:
            return False
    return len(names) == 2


async def test_a_router_that_cannot_be_read_fails_the_snapshot() -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ControllerError, match="cannot be read"):
            await take_snapshot(session, [f"http://127.0.0.1:{free_port()}"])
        with pytest.raises(ControllerError, match="no router"):
            await take_snapshot(session, [])
