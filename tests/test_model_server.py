"""The native engine in-process: readiness, metadata, headers, metrics, batching, limits."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pandas as pd
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from model_server.http.app import create_app
from model_server.http.state import STATE
from model_server.model.loading import (
    LoadedModel,
    ModelLoadError,
    ResolvedModel,
    load,
    resolve,
    warm,
)
from model_server.model.served import ServedModel, served_in_process
from model_server.settings import ServerSettings
from tests.conftest import TrainedRegistry
from tests.helpers import point_mlflow_at

pytestmark = pytest.mark.slow  # real MLflow, model servers or whole systems

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
ROW = {"hours_studied": 6.5, "sleep_hours": 7.0, "attendance_percent": 90.0, "previous_scores": 85}
FEATURES = list(ROW)


@pytest.fixture(scope="module")
def champion(trained_registry: TrainedRegistry) -> LoadedModel:
    """The registry's linear champion, loaded and warmed once."""
    point_mlflow_at(trained_registry.settings)
    return load(resolve("models:/StudentExamPredictor@champion"))


@pytest.fixture(scope="module")
def challenger(trained_registry: TrainedRegistry) -> LoadedModel:
    """The registry's random-forest challenger, loaded and warmed once."""
    point_mlflow_at(trained_registry.settings)
    return load(resolve("models:/StudentExamPredictor@challenger"))


async def _serve(
    aiohttp_client: ClientFactory,
    model: LoadedModel,
    registry: CollectorRegistry | None = None,
    **settings: Any,
) -> TestClient[Any, Any]:
    """Serve an already loaded model in-process and wait until it is ready."""
    app = create_app(
        ServerSettings(model_uri=model.resolved.requested_uri, **settings),
        model.resolved,
        registry=registry,
        loader=lambda _resolved: served_in_process(model),
    )
    client = await aiohttp_client(app)
    await asyncio.wait_for(app[STATE].settled.wait(), 30)
    return client


def _records(rows: list[dict[str, float]]) -> str:
    return json.dumps({"dataframe_records": rows})


def _expected(model: LoadedModel, rows: list[dict[str, float]]) -> list[float]:
    frame = pd.DataFrame(rows, columns=FEATURES).astype("float64")
    return [float(value) for value in model.pyfunc.get_raw_model().predict(frame)]


async def test_health_is_503_until_the_model_answered_its_example(
    aiohttp_client: ClientFactory, champion: LoadedModel
) -> None:
    """While loading: /ping and /health 503 and scoring refused; after warm-up: 200."""
    release = threading.Event()

    def slow_loader(resolved: ResolvedModel) -> ServedModel:
        release.wait(30)
        return served_in_process(champion)

    app = create_app(
        ServerSettings(model_uri="models:/StudentExamPredictor@champion"),
        champion.resolved,
        loader=slow_loader,
    )
    client = await aiohttp_client(app)
    loading = await client.get("/health")
    assert loading.status == 503
    assert (await loading.json())["status"] == "loading"
    assert (await client.get("/ping")).status == 503
    refused = await client.post("/invocations", data=_records([ROW]), headers=_JSON)
    assert refused.status == 503
    assert (await refused.json())["error_code"] == "TEMPORARILY_UNAVAILABLE"
    release.set()
    await asyncio.wait_for(app[STATE].settled.wait(), 30)
    ready = await client.get("/health")
    assert ready.status == 200
    body = await ready.json()
    assert body["status"] == "ready"
    assert body["warm_up"].startswith("warm: predicted 2 example row")
    assert (await client.get("/ping")).status == 200


async def test_a_failed_load_is_reported_not_served(
    aiohttp_client: ClientFactory, champion: LoadedModel
) -> None:
    """A load that fails leaves /health at 503 with the reason."""

    def broken(_resolved: ResolvedModel) -> ServedModel:
        raise ModelLoadError("cannot load models:/X/1: no such thing")

    app = create_app(ServerSettings(model_uri="models:/X/1"), champion.resolved, loader=broken)
    client = await aiohttp_client(app)
    await asyncio.wait_for(app[STATE].settled.wait(), 30)
    answer = await client.get("/health")
    assert answer.status == 503
    assert (await answer.json())["error"] == "cannot load models:/X/1: no such thing"


def test_warm_up_refuses_a_model_that_fails_its_own_example(champion: LoadedModel) -> None:
    """A model whose logged example does not predict never becomes ready."""
    broken = replace(champion, serving_example=b'{"dataframe_records": [{"x": 1}]}')
    with pytest.raises(ModelLoadError, match="fails on its own input example"):
        warm(broken)


async def test_metadata_reports_the_pinned_model(
    aiohttp_client: ClientFactory, champion: LoadedModel, trained_registry: TrainedRegistry
) -> None:
    """/metadata: name, resolved version, run, URIs, signature, example, flavor, load time."""
    client = await _serve(aiohttp_client, champion)
    body = await (await client.get("/metadata")).json()
    assert body["name"] == "StudentExamPredictor"
    assert body["version"] == "1"
    assert body["model_uri"] == "models:/StudentExamPredictor/1"
    assert body["requested_uri"] == "models:/StudentExamPredictor@champion"
    assert body["run_id"] == trained_registry.champion.run_id
    assert body["flavor"] == "sklearn"
    assert [column["name"] for column in body["signature"]["inputs"]] == FEATURES
    assert set(body["input_example"][0]) == set(FEATURES)
    assert body["load_seconds"] > 0
    assert body["compiled"] is True
    assert body["loaded_at"].endswith("+00:00")


_JSON = {"Content-Type": "application/json"}


async def test_every_answer_carries_the_model_version(
    aiohttp_client: ClientFactory, champion: LoadedModel
) -> None:
    """X-Model-Version is on successes, errors, probes, metrics and unknown paths alike."""
    client = await _serve(aiohttp_client, champion)
    answers = [
        await client.get("/ping"),
        await client.get("/health"),
        await client.get("/version"),
        await client.get("/metrics"),
        await client.get("/nowhere"),
        await client.post("/invocations", data=_records([ROW]), headers=_JSON),
        await client.post("/invocations", data="{", headers=_JSON),
        await client.post("/invocations", data=_records([ROW])),
    ]
    assert [answer.headers.get("X-Model-Version") for answer in answers] == ["1"] * len(answers)
    assert [answer.status for answer in answers] == [200, 200, 200, 200, 404, 200, 400, 415]


async def test_concurrent_requests_are_batched_each_getting_its_own_rows(
    aiohttp_client: ClientFactory, challenger: LoadedModel
) -> None:
    """64 requests of 1-5 rows in one window: fewer predict calls, exact rows back in order."""
    registry = CollectorRegistry()
    client = await _serve(aiohttp_client, challenger, registry, batch_window_ms=50)
    bodies = [
        [
            {**ROW, "hours_studied": 1 + (i % 11), "previous_scores": 40 + j}
            for j in range(i % 5 + 1)
        ]
        for i in range(64)
    ]
    answers = await asyncio.gather(
        *(client.post("/invocations", data=_records(rows), headers=_JSON) for rows in bodies)
    )
    for rows, answer in zip(bodies, answers, strict=True):
        assert answer.status == 200
        got = (await answer.json())["predictions"]
        assert got == pytest.approx(_expected(challenger, rows), abs=1e-9)
    labels = {"version": "2"}
    calls = registry.get_sample_value("mlcanary_model_batch_requests_count", labels)
    batched = registry.get_sample_value("mlcanary_model_batch_requests_sum", labels)
    assert batched == 64
    assert calls is not None and calls < 16
    assert registry.get_sample_value("mlcanary_model_batch_rows_sum", labels) == sum(
        len(rows) for rows in bodies
    )
    assert (
        registry.get_sample_value("mlcanary_model_requests_total", labels | {"code": "200"}) == 64
    )


async def test_one_bad_request_never_fails_its_neighbours(
    aiohttp_client: ClientFactory, challenger: LoadedModel
) -> None:
    """A row the forest cannot take (1e300 overflows float32) fails alone, with MLflow's error."""
    client = await _serve(aiohttp_client, challenger, batch_window_ms=50)
    good = [[{**ROW, "hours_studied": float(i % 12)}] for i in range(20)]
    bad = [{**ROW, "sleep_hours": 1e300}]
    answers = await asyncio.gather(
        *(client.post("/invocations", data=_records(rows), headers=_JSON) for rows in [*good, bad])
    )
    *fine, refused = answers
    for rows, answer in zip(good, fine, strict=True):
        assert answer.status == 200
        assert (await answer.json())["predictions"] == pytest.approx(
            _expected(challenger, rows), abs=1e-9
        )
    assert refused.status == 400
    assert (await refused.json())["error_code"] == "BAD_REQUEST"


async def test_requests_with_params_are_never_batched(
    aiohttp_client: ClientFactory, champion: LoadedModel
) -> None:
    """Requests with `params` take MLflow's path alone; only plain requests share batches."""
    registry = CollectorRegistry()
    client = await _serve(aiohttp_client, champion, registry, batch_window_ms=50)
    plain = [_records([{**ROW, "hours_studied": float(i)}]) for i in range(1, 11)]
    with_params = [json.dumps({"dataframe_records": [ROW], "params": {"k": i}}) for i in range(10)]
    answers = await asyncio.gather(
        *(client.post("/invocations", data=body, headers=_JSON) for body in plain + with_params)
    )
    assert [answer.status for answer in answers] == [200] * 20
    batched = registry.get_sample_value("mlcanary_model_batch_requests_sum", {"version": "1"})
    assert batched == 10


async def test_batching_can_be_switched_off(
    aiohttp_client: ClientFactory, champion: LoadedModel
) -> None:
    """With batching off no batch is recorded and answers are unchanged."""
    registry = CollectorRegistry()
    client = await _serve(aiohttp_client, champion, registry, batching=False)
    answers = await asyncio.gather(
        *(client.post("/invocations", data=_records([ROW]), headers=_JSON) for _ in range(8))
    )
    for answer in answers:
        assert (await answer.json())["predictions"] == pytest.approx(_expected(champion, [ROW]))
    assert registry.get_sample_value("mlcanary_model_batch_requests_count", {"version": "1"}) == 0


async def test_a_body_over_the_limit_is_413_in_mlflow_shape(
    aiohttp_client: ClientFactory, champion: LoadedModel
) -> None:
    """A body larger than max_body_bytes gets 413 with an error_code, and the server goes on."""
    client = await _serve(aiohttp_client, champion, max_body_bytes=4096)
    big = _records([ROW] * 200)
    refused = await client.post("/invocations", data=big, headers=_JSON)
    assert refused.status == 413
    assert (await refused.json())["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert (await client.post("/invocations", data=_records([ROW]), headers=_JSON)).status == 200
