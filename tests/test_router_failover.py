"""A canary killed under load, with real model servers of both engines behind the router: the
retry budget is a rate, so 64 clients at weight 50 lose no request."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from contracts.routing import RoutingConfig, write_routing_file
from router.settings import RouterSettings
from router.web.app import create_app
from tests.conftest import TrainedRegistry
from tests.routers import running_front, wait_until
from tests.servers import ServerProcess, start_model_server
from tests.test_router_http import PLANES, post, read_answer

pytestmark = pytest.mark.slow  # real MLflow, model servers or whole systems

ROW = {"hours_studied": 6.5, "sleep_hours": 7.0, "attendance_percent": 90.0, "previous_scores": 85}
BODY = json.dumps({"dataframe_records": [ROW]}).encode()
CLIENTS = 64


def _serve(trained: TrainedRegistry, alias: str, engine: str, name: str) -> ServerProcess:
    server = start_model_server(
        f"models:/StudentExamPredictor@{alias}",
        trained.settings.tracking_uri,
        trained.state / "logs" / f"failover-{engine}-{name}.log",
        engine=engine,
    )
    server.wait_healthy()
    return server


@pytest.fixture(scope="module", params=["native", "mlflow"])
def stable(
    request: pytest.FixtureRequest, trained_registry: TrainedRegistry
) -> Iterator[tuple[str, ServerProcess]]:
    """The champion served by one engine, shared by this module's tests of that engine."""
    engine = request.param
    server = _serve(trained_registry, "champion", engine, "stable")
    try:
        yield engine, server
    finally:
        server.stop()


@pytest.mark.parametrize("plane", PLANES)
async def test_a_canary_killed_at_concurrency_64_fails_no_request(
    plane: str,
    stable: tuple[str, ServerProcess],
    trained_registry: TrainedRegistry,
    tmp_path: Path,
) -> None:
    """64 clients at weight 50; the canary's model server is SIGKILLed mid-load: every
    request before and after is answered 200, and the canary is taken out of service."""
    engine, stable_server = stable
    canary = await asyncio.to_thread(_serve, trained_registry, "challenger", engine, "canary")
    try:
        path = tmp_path / "routing.yaml"
        write_routing_file(
            path,
            RoutingConfig.model_validate(
                {
                    "model": "StudentExamPredictor",
                    "stable": {"url": stable_server.url, "version": "1"},
                    "canary": {"url": canary.url, "version": "2", "weight": 50},
                }
            ),
        )
        registry = CollectorRegistry()
        app = create_app(RouterSettings(config_path=path), registry=registry, rng=random.Random(0))
        async with running_front(app, fast_path=plane == "raw") as front:
            statuses: list[int] = []
            stop = asyncio.Event()

            async def client() -> None:
                reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
                try:
                    while not stop.is_set():
                        writer.write(post(BODY))
                        statuses.append((await read_answer(reader)).status)
                finally:
                    writer.close()

            def canary_answers() -> float:
                labels = {"variant": "canary", "version": "2", "code": "200"}
                return registry.get_sample_value("mlcanary_requests_total", labels) or 0.0

            clients = [asyncio.create_task(client()) for _ in range(CLIENTS)]
            await wait_until(lambda: canary_answers() >= CLIENTS, "the canary under load", 120)
            os.killpg(canary.process.pid, signal.SIGKILL)
            killed_at = len(statuses)
            await wait_until(lambda: len(statuses) >= killed_at + 2000, "2,000 more answers", 120)
            stop.set()
            await asyncio.gather(*clients)
        assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
        failovers = registry.get_sample_value(
            "mlcanary_failovers_total", {"from_variant": "canary"}
        )
        assert failovers is not None and failovers >= 1
    finally:
        canary.stop()
