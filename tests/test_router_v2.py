"""The router relays the Open Inference Protocol (V2) as it relays `/invocations`.

Two real model servers know the model under their own V2 names (`exam-stable`, `exam-canary`);
clients ask the router under the routing file's name. On both planes: the split, the variant's
own path and name, the predictions counted from V2 answers exactly as from MLflow answers, the
prediction log, a canary killed under V2 load failing over with no request lost, shadow copies
sent at the canary's V2 path, and every refusal in the protocol's `{"error"}` shape.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from common.predictionlog import read_predictions
from contracts.routing import RoutingConfig, write_routing_file
from router.settings import RouterSettings
from router.web.app import create_app
from tests.conftest import TrainedRegistry
from tests.routers import running_front, wait_until
from tests.servers import ServerProcess, start_model_server
from tests.test_router_http import PLANES

pytestmark = pytest.mark.slow  # real MLflow, model servers or whole systems

MODEL = "StudentExamPredictor"
COLUMNS = {"hours_studied": 6.5, "sleep_hours": 7.0, "attendance_percent": 90.0}
V2_REQUEST = {
    "inputs": [
        *({"name": n, "shape": [2, 1], "datatype": "FP64", "data": [v, v + 1]}
          for n, v in COLUMNS.items()),
        {"name": "previous_scores", "shape": [2, 1], "datatype": "INT64", "data": [85, 60]},
    ]
}  # fmt: skip
MLFLOW_REQUEST = {
    "dataframe_split": {
        "columns": [*COLUMNS, "previous_scores"],
        "data": [[*COLUMNS.values(), 85], [*(v + 1 for v in COLUMNS.values()), 60]],
    }
}
INFER = f"/v2/models/{MODEL}/infer"


def _serve(trained: TrainedRegistry, alias: str, name: str) -> ServerProcess:
    server = start_model_server(
        f"models:/{MODEL}@{alias}", trained.settings.tracking_uri,
        trained.state / "logs" / f"v2-{name}.log", extra=("--model-name", name),
    )  # fmt: skip
    server.wait_healthy()
    return server


@pytest.fixture(scope="module")
def servers(trained_registry: TrainedRegistry) -> Iterator[dict[str, ServerProcess]]:
    """The champion as `exam-stable`, the challenger as `exam-canary`."""
    started = {
        "stable": _serve(trained_registry, "champion", "exam-stable"),
        "canary": _serve(trained_registry, "challenger", "exam-canary"),
    }
    try:
        yield started
    finally:
        for server in started.values():
            server.stop()


def routing(servers: dict[str, ServerProcess], **changes: Any) -> RoutingConfig:
    both = ["mlflow", "v2"]
    document: dict[str, Any] = {
        "model": MODEL,
        "stable": {"url": servers["stable"].url, "version": "1", "protocols": both,
                   "model_name": "exam-stable"},
        "canary": {"url": servers["canary"].url, "version": "2", "weight": 50,
                   "protocols": both, "model_name": "exam-canary"},
    }  # fmt: skip
    for key, value in changes.items():
        document[key] = {**document.get(key, {}), **value}
    return RoutingConfig.model_validate(document)


async def post_json(session: aiohttp.ClientSession, url: str, document: Any) -> tuple[int, Any]:
    async with session.post(url, json=document) as answer:
        return answer.status, {"body": await answer.json(), **answer.headers}


@pytest.mark.parametrize("plane", PLANES)
async def test_v2_is_split_counted_logged_and_answered_like_invocations(
    plane: str, servers: dict[str, ServerProcess], tmp_path: Path
) -> None:
    path = tmp_path / "routing.yaml"
    config = routing(servers, log={"percent": 100}, predictions={
        "version": "1", "outputs": {"predictions": {"edges": [40.0, 60.0, 80.0]}}})  # fmt: skip
    write_routing_file(path, config)
    registry = CollectorRegistry()
    settings = RouterSettings(config_path=path, prediction_log=tmp_path / "log")
    app = create_app(settings, registry=registry, rng=random.Random(0))
    async with running_front(app, fast_path=plane == "raw") as front:
        base = f"http://127.0.0.1:{front.port}"
        async with aiohttp.ClientSession() as session:
            answers = [await post_json(session, base + INFER, V2_REQUEST) for _ in range(60)]
            mlflow = [await post_json(session, base + "/invocations", MLFLOW_REQUEST)
                      for _ in range(20)]  # fmt: skip
    by_variant: dict[str, list[Any]] = {}
    for status, answer in answers:
        assert status == 200, answer
        by_variant.setdefault(answer["X-Model-Variant"], []).append(answer["body"])
    assert set(by_variant) == {"stable", "canary"}, "weight 50: both variants answer"
    for variant, bodies in by_variant.items():
        # Each server was asked under its own name; its answer names it so.
        assert {body["model_name"] for body in bodies} == {f"exam-{variant}"}
        assert all(body["outputs"][0]["shape"] == [2, 1] for body in bodies)
    # The same rows over MLflow's protocol: the same predictions per variant.
    for status, answer in mlflow:
        assert status == 200
        v2_data = by_variant[answer["X-Model-Variant"]][0]["outputs"][0]["data"]
        assert answer["body"]["predictions"] == pytest.approx(v2_data, abs=1e-9)

    def counted(variant: str) -> float:
        total = registry.get_sample_value(
            "mlcanary_prediction_value_count", {"variant": variant, "output": "predictions"}
        )
        return total or 0.0

    # Every answer's two predictions counted, V2 and MLflow's alike.
    asked = {v: 2 * (len(by_variant[v]) + sum(a["X-Model-Variant"] == v for _, a in mlflow))
             for v in by_variant}  # fmt: skip
    await wait_until(lambda: all(counted(v) == n for v, n in asked.items()), "counts", 30)
    logged = await asyncio.to_thread(lambda: list(read_predictions(tmp_path / "log")))
    v2_logged = [r for r in logged if "inputs" in r.inputs]
    assert len(v2_logged) == 60, len(logged)
    assert all(isinstance(r.predictions, list) and len(r.predictions) == 2 for r in v2_logged)


@pytest.mark.parametrize("plane", PLANES)
async def test_refusals_are_the_protocol_s_errors(
    plane: str, servers: dict[str, ServerProcess], tmp_path: Path
) -> None:
    path = tmp_path / "routing.yaml"
    write_routing_file(path, routing(servers, sticky={"header": "X-User-Id"}))
    registry = CollectorRegistry()
    app = create_app(RouterSettings(config_path=path), registry=registry, rng=random.Random(0))
    async with running_front(app, fast_path=plane == "raw") as front:
        base = f"http://127.0.0.1:{front.port}"
        async with aiohttp.ClientSession() as session:
            status, answer = await post_json(session, base + "/v2/models/Other/infer", V2_REQUEST)
            assert (status, answer["body"]) == (404, {"error": "Model Other not found"})
            status, answer = await post_json(
                session, base + f"/v2/models/{MODEL}/versions/2/infer", V2_REQUEST
            )
            assert status == 404 and "by its split" in answer["body"]["error"], answer
            # Bad inputs are the chosen model server's 400, passed on unchanged, asked of one
            # variant only (a 4xx is the client's: never retried on the other).
            column = V2_REQUEST["inputs"][0]
            bad = {
                "no inputs": {"inputs": []},
                "shape mismatch": {"inputs": [{**column, "shape": [3, 1]}]},
                "unknown datatype": {"inputs": [{**column, "datatype": "FP99"}]},
                "missing input": {"inputs": V2_REQUEST["inputs"][:3]},
            }
            for case, document in bad.items():
                status, answer = await post_json(session, base + INFER, document)
                assert status == 400 and set(answer["body"]) == {"error"}, (case, answer)
            assert not registry.get_sample_value(
                "mlcanary_failovers_total", {"from_variant": "canary"}
            )
            refused = sum(
                registry.get_sample_value(
                    "mlcanary_requests_total", {"variant": v, "version": n, "code": "400"}
                ) or 0
                for v, n in (("stable", "1"), ("canary", "2"))
            )  # fmt: skip
            assert refused == len(bad), refused
            # Sticky: the same key, the same variant, whichever protocol.
            sticky = {"X-User-Id": "student-7"}
            seen = set()
            for _ in range(20):
                async with session.post(base + INFER, json=V2_REQUEST, headers=sticky) as a:
                    seen.add(a.headers["X-Model-Variant"])
                async with session.post(
                    base + "/invocations", json=MLFLOW_REQUEST, headers=sticky
                ) as a:
                    seen.add(a.headers["X-Model-Variant"])
            assert len(seen) == 1, seen
            async with session.get(base + f"/v2/models/{MODEL}") as described:
                metadata = await described.json()
            assert metadata["name"] == MODEL and len(metadata["inputs"]) == 4, metadata
            async with session.get(base + "/v2/health/ready") as ready:
                assert (ready.status, await ready.json()) == (200, {"ready": True})
            async with session.post(base + "/v2/repository/index") as other:
                body = await other.json()
                assert other.status == 404 and "is not an endpoint" in body["error"], body
        # The canary speaks MLflow's protocol only: V2 is refused before any variant is chosen.
        write_routing_file(
            path, routing(servers, canary={"protocols": ["mlflow"]}, sticky={"header": "X-User-Id"})
        )
        await wait_until(lambda: app_protocols(app) == ("mlflow",), "the reload", 30)
        async with aiohttp.ClientSession() as session:
            status, answer = await post_json(session, base + INFER, V2_REQUEST)
            assert status == 404 and "canary.protocols" in answer["body"]["error"], answer
            status, answer = await post_json(session, base + "/invocations", MLFLOW_REQUEST)
            assert status == 200, answer
        write_routing_file(
            path, routing(servers, stable={"protocols": ["v2"]}, sticky={"header": "X-User-Id"})
        )
        await wait_until(lambda: app_protocols(app, "stable") == ("v2",), "the reload", 30)
        async with aiohttp.ClientSession() as session:
            status, answer = await post_json(session, base + "/invocations", MLFLOW_REQUEST)
            assert status == 404 and answer["body"]["error_code"] == "ENDPOINT_NOT_FOUND"


def app_protocols(app: Any, variant: str = "canary") -> tuple[str, ...]:
    from router.web.state import TABLE

    config: RoutingConfig = app[TABLE].current
    return tuple(config.upstream(variant).protocols)  # type: ignore[arg-type]


@pytest.mark.parametrize("plane", PLANES)
async def test_a_canary_killed_under_v2_load_fails_no_request(
    plane: str, trained_registry: TrainedRegistry, servers: dict[str, ServerProcess],
    tmp_path: Path,
) -> None:  # fmt: skip
    canary = await asyncio.to_thread(_serve, trained_registry, "challenger", "exam-canary")
    path = tmp_path / "routing.yaml"
    write_routing_file(path, routing({**servers, "canary": canary}))
    registry = CollectorRegistry()
    app = create_app(RouterSettings(config_path=path), registry=registry, rng=random.Random(0))
    statuses: list[int] = []
    try:
        async with running_front(app, fast_path=plane == "raw") as front:
            stop = asyncio.Event()
            url = f"http://127.0.0.1:{front.port}{INFER}"

            async def client(session: aiohttp.ClientSession) -> None:
                while not stop.is_set():
                    async with session.post(url, json=V2_REQUEST) as answer:
                        await answer.read()
                        statuses.append(answer.status)

            def canary_answers() -> float:
                labels = {"variant": "canary", "version": "2", "code": "200"}
                return registry.get_sample_value("mlcanary_requests_total", labels) or 0.0

            connector = aiohttp.TCPConnector(limit=32)
            async with aiohttp.ClientSession(connector=connector) as session:
                clients = [asyncio.create_task(client(session)) for _ in range(32)]
                await wait_until(lambda: canary_answers() >= 32, "the canary under load", 120)
                os.killpg(canary.process.pid, signal.SIGKILL)
                killed_at = len(statuses)
                await wait_until(lambda: len(statuses) >= killed_at + 1000, "1,000 more", 120)
                stop.set()
                await asyncio.gather(*clients)
    finally:
        canary.stop()
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    failovers = registry.get_sample_value("mlcanary_failovers_total", {"from_variant": "canary"})
    assert failovers is not None and failovers >= 1


async def test_shadow_copies_reach_the_canary_at_its_v2_path(
    servers: dict[str, ServerProcess], tmp_path: Path
) -> None:
    path = tmp_path / "routing.yaml"
    write_routing_file(path, routing(servers, canary={"weight": 0}, shadow={"percent": 100}))
    registry = CollectorRegistry()
    app = create_app(RouterSettings(config_path=path), registry=registry, rng=random.Random(0))
    async with running_front(app, fast_path=True) as front:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{front.port}{INFER}"
            for _ in range(10):
                status, answer = await post_json(session, url, V2_REQUEST)
                assert (status, answer["X-Model-Variant"]) == (200, "stable"), answer

        def copied() -> float:
            return sum(
                registry.get_sample_value("mlcanary_shadow_requests_total", {"result": r}) or 0
                for r in ("match", "mismatch")
            )

        await wait_until(lambda: copied() == 10, "10 shadow copies compared", 30)
        assert not registry.get_sample_value("mlcanary_shadow_requests_total", {"result": "error"})
        deltas = registry.get_sample_value("mlcanary_shadow_prediction_delta_count")
        assert deltas == 20, deltas  # both rows of each copy compared with stable's


def test_the_routing_file_s_protocol_fields_are_checked() -> None:
    base = {"model": MODEL, "stable": {"url": "http://127.0.0.1:1", "version": "1"}}
    assert RoutingConfig.model_validate(base).stable.protocols == ("mlflow",)
    for bad in ({"protocols": ["grpc"]}, {"protocols": []}, {"protocols": ["v2", "v2"]},
                {"model_name": "a/b"}, {"model_version": ""}):  # fmt: skip
        with pytest.raises(ValueError, match="stable"):
            RoutingConfig.model_validate({**base, "stable": {**base["stable"], **bad}})
    assert json.loads(RoutingConfig.model_validate(base).model_dump_json())["stable"][
        "protocols"
    ] == ["mlflow"]
