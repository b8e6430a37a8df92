"""The router in-process, in front of real upstream HTTP servers on free ports."""

from __future__ import annotations

import asyncio
import collections
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from contracts.routing import RoutingConfig, content_version, write_routing_file
from router.settings import RouterSettings
from router.web.app import create_app
from router.web.state import HEALTH, SHADOW, TABLE
from tests.routers import running_front, wait_until

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
BODY = json.dumps({"dataframe_records": [{"hours_studied": 6.5}]}).encode()
JSON = {"Content-Type": "application/json"}
FORCE_TOKEN = "force-token-of-the-tests"  # noqa: S105 (a test's own)


def forced(variant: str) -> dict[str, str]:
    """The headers of a request an operator forces to `variant`."""
    return {"X-Force-Variant": variant, "X-Force-Token": FORCE_TOKEN}


@dataclass
class FakeModelServer:
    """A real HTTP upstream answering like a model server, with switchable faults."""

    version: str
    prediction: float
    status: int = 200
    delay: float = 0.0
    seen: list[bytes] = field(default_factory=list)
    answer: Any = None
    """A whole scoring answer to give instead of `{"predictions": [prediction]}`."""
    receiving: list[str] = field(default_factory=list)
    """The `X-Client` header of each request whose first body bytes arrived, in that order."""
    headers: list[dict[str, str]] = field(default_factory=list)
    """Each request's headers, in the order they came."""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/invocations", self.invocations)
        app.router.add_get("/ping", self.ping)
        return app

    async def invocations(self, request: web.Request) -> web.Response:
        self.headers.append(dict(request.headers))
        pieces = []
        async for piece in request.content.iter_any():
            if not pieces:
                self.receiving.append(request.headers.get("X-Client", ""))
            pieces.append(piece)
        body = b"".join(pieces)
        self.seen.append(body)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            error = {"error_code": "BAD_REQUEST", "message": f"upstream {self.version} says no"}
            return web.json_response(error, status=self.status)
        answer = self.answer if self.answer is not None else {"predictions": [self.prediction]}
        return web.json_response(answer, headers={"X-Model-Version": self.version})

    async def ping(self, _request: web.Request) -> web.Response:
        return web.Response(text="\n", status=200 if self.status != 503 else 503)


@dataclass
class Stack:
    """Router client, its upstreams and servers, its metrics, its routing file."""

    client: TestClient[Any, Any]
    stable: FakeModelServer
    canary: FakeModelServer
    servers: dict[str, TestServer]
    registry: CollectorRegistry
    path: Path

    def write(self, weight: float, **extra: Any) -> None:
        write_routing_file(self.path, routing(self.servers, weight, **extra))

    async def apply(self, weight: float, **extra: Any) -> None:
        """Write the routing file and wait until the router has loaded it."""
        self.write(weight, **extra)
        version = content_version(self.path.read_bytes())
        table = self.client.app[TABLE]
        await wait_until(lambda: table.version == version, f"routing file {version} loaded")

    def count(self, variant: str, version: str, code: str = "200") -> float:
        labels = {"variant": variant, "version": version, "code": code}
        return self.registry.get_sample_value("mlcanary_requests_total", labels) or 0.0

    def forced_count(self, variant: str, version: str, code: str = "200") -> float:
        labels = {"variant": variant, "version": version, "code": code}
        return self.registry.get_sample_value("mlcanary_forced_requests_total", labels) or 0.0

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0


def routing(servers: dict[str, TestServer], weight: float, **extra: Any) -> RoutingConfig:
    def url(name: str) -> str:
        return str(servers[name].make_url("")).rstrip("/")

    return RoutingConfig.model_validate(
        {
            "model": "StudentExamPredictor",
            "stable": {"url": url("stable"), "version": "1"},
            "canary": {"url": url("canary"), "version": "2", "weight": weight},
            "force_header": True,
            **extra,
        }
    )


class FrontClient:
    """What the tests use of aiohttp's TestClient, aimed at the router's public front."""

    def __init__(self, app: web.Application, port: int) -> None:
        self.app = app
        self.server = SimpleNamespace(port=port)
        self.session = aiohttp.ClientSession(f"http://127.0.0.1:{port}")

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.session.post(path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.session.get(path, **kwargs)


@pytest.fixture(params=["aiohttp", "raw"])
async def stack(
    request: pytest.FixtureRequest, aiohttp_server: ServerFactory, tmp_path: Path
) -> AsyncIterator[Stack]:
    """Two fake model servers, a routing file at weight 10, and a router with a seeded RNG,
    its front relaying everything to the aiohttp app (the aiohttp plane) or taking
    `POST /invocations` itself (the raw plane)."""
    stable, canary = FakeModelServer("1", 30.0), FakeModelServer("2", 40.0)
    servers = {
        "stable": await aiohttp_server(stable.app()),
        "canary": await aiohttp_server(canary.app()),
    }
    path = tmp_path / "routing.yaml"
    write_routing_file(path, routing(servers, 10))
    registry = CollectorRegistry()
    settings = RouterSettings(
        config_path=path,
        reload_interval_s=0.02,
        health_interval_s=0.2,
        eject_base_s=0.5,
        total_timeout_s=1.0,
        max_body_bytes=64 * 1024,
        stream_above_bytes=4096,
        force_token=SecretStr(FORCE_TOKEN),
    )
    overrides = request.node.get_closest_marker("router_settings")
    if overrides is not None:
        settings = settings.model_copy(update=overrides.kwargs)
    app = create_app(settings, registry=registry, rng=random.Random(1))
    async with running_front(app, fast_path=request.param == "raw") as front:
        client = FrontClient(app, front.port)
        try:
            yield Stack(client, stable, canary, servers, registry, path)  # type: ignore[arg-type]
        finally:
            await client.session.close()


async def _post(stack: Stack, n: int, headers: dict[str, str] | None = None) -> list[Any]:
    async def one() -> Any:
        answer = await stack.client.post(
            "/invocations", data=BODY, headers={**JSON, **(headers or {})}
        )
        await answer.read()
        return answer

    return [await one() for _ in range(n)]


async def test_the_split_is_exactly_the_seeded_draws(stack: Stack) -> None:
    """At weight 10 the canary gets exactly the draws below 10 of Random(1), and metrics agree."""
    answers = await _post(stack, 2_000)
    draws = random.Random(1)
    chosen = ["canary" if draws.random() * 100 < 10 else "stable" for _ in range(2_000)]
    expected = chosen.count("canary")
    variants = [answer.headers["X-Model-Variant"] for answer in answers]
    assert variants == chosen  # one draw per request, in order: each request its own draw
    assert stack.count("canary", "2") == expected
    assert stack.count("stable", "1") == 2_000 - expected
    assert len(stack.canary.seen) == expected


async def test_no_client_reaches_a_canary_at_weight_0(stack: Stack) -> None:
    """Forcing takes the force token (never passed on to a model server) and, at weight 0, the
    file's leave; refused forces are routed by the split and counted by reason."""
    await stack.apply(0)
    (anonymous,) = await _post(stack, 1, {"X-Force-Variant": "canary"})
    (guessed,) = await _post(stack, 1, {"X-Force-Variant": "canary", "X-Force-Token": "guess"})
    (operator,) = await _post(stack, 1, forced("canary"))
    variants = [a.headers["X-Model-Variant"] for a in (anonymous, guessed, operator)]
    assert variants == ["stable"] * 3
    assert stack.canary.seen == []

    def refused(reason: str) -> float:
        return stack.value("mlcanary_force_refused_total", {"reason": reason})

    assert (refused("token"), refused("weight_zero"), refused("disabled")) == (2, 1, 0)
    await stack.apply(0, force_zero_weight=True)
    (allowed,) = await _post(stack, 1, forced("canary"))
    assert allowed.headers["X-Model-Variant"] == "canary"
    assert all("X-Force-Token" not in headers for headers in stack.canary.headers)
    assert all("X-Force-Token" not in headers for headers in stack.stable.headers)
    await stack.apply(10, force_header=False)
    await _post(stack, 1, forced("canary"))
    assert refused("disabled") == 1


async def test_forced_requests_are_not_in_the_gates_evidence(stack: Stack) -> None:
    """What the rollout reads of /metrics counts live traffic only: forced requests are in a
    family of their own, their predictions not counted."""
    from controller.rollout.window import Snapshot, add_exposition, window_between

    spec = {"version": "1", "outputs": {"predictions": {"edges": [35.0]}}}
    await stack.apply(0, predictions=spec, force_zero_weight=True)
    before = Snapshot()
    add_exposition(before, await (await stack.client.get("/metrics")).text())
    stack.canary.status = 500
    answers = await _post(stack, 20, forced("canary"))
    assert {answer.headers["X-Model-Variant"] for answer in answers} == {"canary"}
    await _post(stack, 5)
    after = Snapshot()
    add_exposition(after, await (await stack.client.get("/metrics")).text())
    window = window_between(before, after)
    assert (window.canary.requests, window.canary.errors) == (0, 0)
    assert sum(window.canary.predictions["predictions"].values()) == 0
    assert window.stable.requests == 5
    assert stack.forced_count("canary", "2", "500") == 20


async def test_answers_pass_through_unchanged_and_tagged(stack: Stack) -> None:
    """Body and status come back as the upstream sent them, with variant and version added."""
    (answer,) = await _post(stack, 1, forced("canary"))
    assert answer.status == 200
    assert await answer.json() == {"predictions": [40.0]}
    assert answer.headers["X-Model-Variant"] == "canary"
    assert answer.headers["X-Model-Version"] == "2"
    assert stack.canary.seen == [BODY]
    stack.stable.status = 400
    (refused,) = await _post(stack, 1, forced("stable"))
    assert refused.status == 400
    assert (await refused.json())["message"] == "upstream 1 says no"
    assert refused.headers["X-Model-Version"] == "1"


async def test_a_dead_canary_costs_the_client_nothing(stack: Stack) -> None:
    """Canary gone: every request answered by stable, failovers counted, canary ejected."""
    await stack.apply(50)
    await stack.servers["canary"].close()
    answers = await _post(stack, 100)
    assert [answer.status for answer in answers] == [200] * 100
    assert {answer.headers["X-Model-Variant"] for answer in answers} == {"stable"}
    failovers = stack.value("mlcanary_failovers_total", {"from_variant": "canary"})
    assert 5 <= failovers < 50  # ejected after 5 consecutive failures, then no more tries
    health = await (await stack.client.get("/health")).json()
    assert health["upstreams"]["canary"]["healthy"] is False
    assert health["status"] == "healthy"


async def test_a_canary_answering_503_is_retried_on_stable(stack: Stack) -> None:
    """A 502/503 from the canary never reaches the client while the budget allows a retry."""
    stack.canary.status = 503
    (answer,) = await _post(stack, 1, forced("canary"))
    assert answer.status == 200
    assert answer.headers["X-Model-Variant"] == "stable"
    assert stack.value("mlcanary_failovers_total", {"from_variant": "canary"}) == 1


async def test_stable_down_is_a_prompt_error_in_mlflow_shape(stack: Stack) -> None:
    """With stable gone: 503 with an error_code, at once, and /health says why."""
    await stack.apply(0)
    await stack.servers["stable"].close()
    (answer,) = await _post(stack, 1)
    assert answer.status == 503
    body = await answer.json()
    assert body["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert "stable" in body["message"]


async def test_a_slow_upstream_is_a_504(stack: Stack) -> None:
    """An upstream slower than the total timeout gives 504 DEADLINE_EXCEEDED."""
    stack.stable.delay = 2.0
    (answer,) = await _post(stack, 1, forced("stable"))
    assert answer.status == 504
    assert answer.reason == "Gateway Timeout"
    assert (await answer.json())["error_code"] == "DEADLINE_EXCEEDED"


async def test_a_body_over_the_limit_is_413(stack: Stack) -> None:
    """A body over max_body_bytes is refused in MLflow's shape and never forwarded."""
    answer = await stack.client.post("/invocations", data=b"x" * 100_000, headers=JSON)
    assert answer.status == 413
    assert (await answer.json())["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert stack.stable.seen == [] and stack.canary.seen == []


def _keep_loading(
    stack: Stack, statuses: list[int], stop: asyncio.Event, clients: int = 4
) -> list[asyncio.Task[None]]:
    """Start `clients` clients posting until `stop` is set, collecting every status."""

    async def load() -> None:
        while not stop.is_set():
            answer = await stack.client.post("/invocations", data=BODY, headers=JSON)
            await answer.read()
            statuses.append(answer.status)

    return [asyncio.create_task(load()) for _ in range(clients)]


async def test_reloads_under_load_lose_nothing_and_take_effect(stack: Stack) -> None:
    """100 reloads alternating 0 and 100 with invalid files between: no failed request,
    and once a valid file is applied every later request follows it."""
    statuses: list[int] = []
    stop = asyncio.Event()
    loaders = _keep_loading(stack, statuses, stop)
    table = stack.client.app[TABLE]
    for i in range(100):
        weight = 100 if i % 2 else 0
        stack.path.write_text("canary: {weight: 140" if i % 3 else "")
        await wait_until(lambda: table.last_error is not None, "the invalid file noticed")
        await stack.apply(weight)
        assert table.current.canary_weight == weight and table.last_error is None
        after = await _post(stack, 3)
        assert {a.headers["X-Model-Variant"] for a in after} == {"canary" if weight else "stable"}
    stop.set()
    await asyncio.gather(*loaders)
    assert statuses and set(statuses) == {200}
    assert stack.value("mlcanary_config_reloads_total", {"result": "success"}) >= 100
    assert stack.value("mlcanary_config_reloads_total", {"result": "failure"}) >= 60
    assert stack.value("mlcanary_config_last_reload_successful") == 1


async def test_predict_keeps_the_original_shape(stack: Stack) -> None:
    """`{"features": {...}}` in; prediction, model_used current/next, model_info out."""
    await stack.apply(0)
    features = {
        "hours_studied": 6.5,
        "sleep_hours": 7,
        "attendance_percent": 90,
        "previous_scores": 85,
    }
    answer = await stack.client.post("/predict", json={"features": features})
    assert answer.status == 200
    body = await answer.json()
    assert body["prediction"] == 30.0
    assert body["model_used"] == "current"
    assert body["model_info"]["uri"] == "models:/StudentExamPredictor/1"
    assert body["prediction_time"].endswith("+00:00")
    sent = json.loads(stack.stable.seen[-1])
    assert sent == {
        "dataframe_split": {"columns": list(features), "data": [list(features.values())]}
    }
    await stack.apply(0, force_zero_weight=True)
    to_canary = await stack.client.post(
        "/predict", json={"features": features}, headers=forced("canary")
    )
    assert (await to_canary.json())["model_used"] == "next"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"not json", 'expected {"features"'),
        (b'{"hours_studied": 6.5}', "got ['hours_studied']"),
        (b'{"features": []}', "must be a non-empty object"),
        (b'{"features": {"a": [1, 2], "b": [3]}}', "same length"),
        (b'{"features": {"a": 1, "b": [3]}}', "all be numbers, or all be lists"),
    ],
)
async def test_predict_refuses_other_shapes_saying_what_it_expects(
    stack: Stack, body: bytes, expected: str
) -> None:
    """A body not in the original shape is a 400 that says what is expected; nothing sent on."""
    answer = await stack.client.post("/predict", data=body, headers=JSON)
    assert answer.status == 400
    error = await answer.json()
    assert error["error_code"] == "BAD_REQUEST"
    assert expected in error["message"]
    assert stack.stable.seen == [] and stack.canary.seen == []


async def test_index_and_health_report_models_and_file_version(stack: Stack) -> None:
    """`GET /` keeps the original summary; /health carries the routing file's version."""
    index = await (await stack.client.get("/")).json()
    assert index["status"] == "healthy"
    assert index["canary_probability"] == 0.1
    assert index["current_model"]["version"] == "1"
    assert index["next_model"]["version"] == "2"
    health = await (await stack.client.get("/health")).json()
    assert health["config_version"] == stack.client.app[TABLE].version
    assert len(health["config_version"]) == 16


async def test_docs_page_and_its_assets_are_served_locally(stack: Stack) -> None:
    """/openapi.json describes the surface; /docs loads Swagger UI from the router itself."""
    spec = await (await stack.client.get("/openapi.json")).json()
    assert {"/invocations", "/predict", "/health", "/"} <= set(spec["paths"])
    assert spec["openapi"].startswith("3.0.")  # the packaged Swagger UI 4 cannot render 3.1
    page = await (await stack.client.get("/docs")).text()
    assert "/openapi.json" in page
    for asset in ("/docs/static/swagger-ui-bundle.js", "/docs/static/swagger-ui.css"):
        answer = await stack.client.get(asset)
        assert answer.status == 200
        assert len(await answer.read()) > 10_000


async def test_a_canary_that_comes_back_gets_traffic_again(stack: Stack) -> None:
    """Ejected while down, the canary is used again once /ping answers and ejection ends."""
    await stack.apply(50)
    stack.canary.status = 503
    await _post(stack, 40)
    assert stack.value("mlcanary_failovers_total", {"from_variant": "canary"}) >= 5
    stack.canary.status = 200
    health = stack.client.app[HEALTH]
    config = stack.client.app[TABLE].current
    await wait_until(lambda: health.available(config)["canary"], "ejection over, /ping fine")
    answers = await _post(stack, 40)
    assert "canary" in {answer.headers["X-Model-Variant"] for answer in answers}
    assert {answer.status for answer in answers} == {200}


async def _settle_shadows(stack: Stack) -> None:
    tasks = stack.client.app[SHADOW].tasks
    await wait_until(lambda: not tasks, "shadow copies settled")


async def test_shadow_copies_compare_predictions_without_touching_answers(stack: Stack) -> None:
    """At shadow 100% every stable request is copied; deltas recorded; clients see stable."""
    await stack.apply(0, shadow={"percent": 100})
    answers = await _post(stack, 20)
    assert {(await a.json())["predictions"][0] for a in answers} == {30.0}
    await _settle_shadows(stack)
    assert len(stack.canary.seen) == 20
    assert stack.value("mlcanary_shadow_requests_total", {"result": "mismatch"}) == 20
    assert stack.value("mlcanary_shadow_prediction_delta_sum") == pytest.approx(200.0)
    assert stack.count("canary", "2") == 0  # shadow copies are not client requests
    stack.canary.prediction = 30.0
    await _post(stack, 5)
    await _settle_shadows(stack)
    assert stack.value("mlcanary_shadow_requests_total", {"result": "match"}) == 5


@pytest.mark.router_settings(total_timeout_s=60.0)
async def test_a_slow_canary_never_delays_shadowed_answers(stack: Stack) -> None:
    """With the canary hanging, every answer comes while the copies are still waiting on it
    (none has ended yet), and copies past the bound are dropped."""
    await stack.apply(0, shadow={"percent": 100})
    stack.canary.delay = 30.0  # the copies outlast the answers, however slow the machine
    answers = await asyncio.gather(
        *(stack.client.post("/invocations", data=BODY, headers=JSON) for _ in range(50))
    )
    assert {a.status for a in answers} == {200}
    assert len(stack.client.app[SHADOW].tasks) == 32
    assert stack.value("mlcanary_shadow_requests_total", {"result": "dropped"}) == 50 - 32


async def test_predictions_are_counted_in_the_routing_files_buckets(stack: Stack) -> None:
    """Nothing is counted until the routing file says how; then each variant in its buckets."""
    await stack.apply(100)
    await _post(stack, 3)
    assert stack.value("mlcanary_prediction_value_count",
                       {"variant": "canary", "output": "predictions"}) == 0  # fmt: skip
    spec = {"version": "1", "outputs": {"predictions": {"edges": [35.0, 45.0]}}}
    await stack.apply(100, predictions=spec)
    await _post(stack, 10)  # 40.0
    await _post(stack, 5, forced("canary"))  # an operator's: not counted
    await stack.apply(0, predictions=spec)
    await _post(stack, 7)  # 30.0

    def bucket(variant: str, le: str) -> float:
        labels = {"variant": variant, "output": "predictions", "le": le}
        return stack.value("mlcanary_prediction_value_bucket", labels)

    assert (bucket("canary", "35.0"), bucket("canary", "45.0"), bucket("canary", "+Inf")) == (
        0, 10, 10,
    )  # fmt: skip
    assert (bucket("stable", "35.0"), bucket("stable", "+Inf")) == (7, 7)


async def test_each_output_is_counted_and_labels_by_class(stack: Stack) -> None:
    """A DataFrame answer: a label column counted by class (unlisted: other), a score column
    in its buckets; and stable's profile shows its labels and deciles, never an answer."""
    stack.stable.answer = stack.canary.answer = {"predictions": [
        {"label": "cat", "score": 0.9}, {"label": "eel", "score": 0.2},
    ]}  # fmt: skip
    spec = {"version": "1", "outputs": {
        "label": {"classes": ["cat", "dog"]}, "score": {"edges": [0.5]},
    }}  # fmt: skip
    await stack.apply(100, predictions=spec)
    await _post(stack, 4)
    await stack.apply(0, predictions=spec)
    await _post(stack, 60)

    def label(name: str) -> float:
        labels = {"variant": "canary", "output": "label", "class": name}
        return stack.value("mlcanary_prediction_class_total", labels)

    assert (label("cat"), label("dog"), label("other")) == (4, 0, 4)
    score = {"variant": "canary", "output": "score", "le": "0.5"}
    assert stack.value("mlcanary_prediction_value_bucket", score) == 4
    profile = await (await stack.client.get("/predictions-profile")).json()
    assert profile["stable_version"] == "1"
    assert profile["outputs"]["label"] == {
        "rows": 120, "numeric": False, "deciles": [], "labels": {"cat": 60, "eel": 60},
    }  # fmt: skip
    score_profile = profile["outputs"]["score"]
    assert score_profile["numeric"] and score_profile["rows"] == 120
    assert score_profile["deciles"][0] == 0.2 and score_profile["deciles"][-1] == 0.9


async def test_metrics_are_exact_and_pass_promtool(stack: Stack) -> None:
    """After known traffic the text format has every metric, exact counts, and promtool agrees."""
    import shutil
    from asyncio.subprocess import PIPE, STDOUT

    await stack.apply(100)
    await _post(stack, 12)
    stack.canary.status = 400
    await _post(stack, 3)
    await _post(stack, 2, forced("canary"))
    text = await (await stack.client.get("/metrics")).text()
    for name in (
        "mlcanary_requests_total", "mlcanary_request_duration_seconds_bucket",
        "mlcanary_upstream_errors_total", "mlcanary_failovers_total", "mlcanary_variant_weight",
        "mlcanary_upstream_healthy", "mlcanary_config_last_reload_successful",
        "mlcanary_config_last_reload_success_timestamp_seconds", "mlcanary_config_reloads_total",
        "mlcanary_shadow_requests_total", "mlcanary_shadow_prediction_delta_bucket",
    ):  # fmt: skip
        assert f"\n{name}" in text, name
    assert 'mlcanary_requests_total{code="200",variant="canary",version="2"} 12.0' in text
    assert 'mlcanary_requests_total{code="400",variant="canary",version="2"} 3.0' in text
    assert 'mlcanary_forced_requests_total{code="400",variant="canary",version="2"} 2.0' in text
    assert 'mlcanary_variant_weight{variant="canary"} 100.0' in text
    promtool = shutil.which("promtool")
    assert promtool, "promtool is installed by `make system-deps` (Debian's prometheus)"
    checker = await asyncio.create_subprocess_exec(
        promtool, "check", "metrics", stdin=PIPE, stdout=PIPE, stderr=STDOUT
    )
    said, _ = await checker.communicate(text.encode())
    assert checker.returncode == 0, said.decode()


async def test_bad_clients_affect_no_one_else(stack: Stack) -> None:
    """A malformed request, a client that vanishes mid-body and a slow one: others unaffected."""
    host, port = "127.0.0.1", stack.client.server.port
    garbage_reader, garbage_writer = await asyncio.open_connection(host, port)
    garbage_writer.write(b"THIS IS NOT HTTP\r\n\r\n")
    await garbage_writer.drain()
    status_line = await asyncio.wait_for(garbage_reader.readline(), 5)
    assert status_line.split(b" ")[1] == b"400"
    garbage_writer.close()

    head = (
        "POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    ).encode()
    _, vanishing = await asyncio.open_connection(host, port)
    vanishing.write(head + BODY[:10])
    await vanishing.drain()
    vanishing.close()

    slow_reader, slow = await asyncio.open_connection(host, port)
    slow.write(head + BODY[:5])
    await slow.drain()
    answers = await _post(stack, 20)
    assert {a.status for a in answers} == {200}
    slow.write(BODY[5:])
    await slow.drain()
    status_line = await asyncio.wait_for(slow_reader.readline(), 5)
    assert status_line.startswith(b"HTTP/1.1 200")
    slow.close()


BIG = json.dumps({"dataframe_records": [{"hours_studied": i} for i in range(2_000)]}).encode()


async def test_large_bodies_are_relayed_intact_and_fail_over(stack: Stack) -> None:
    """Above the streaming threshold the body reaches the upstream intact, the answer comes
    back tagged, and an unreachable canary still fails over to stable."""
    assert 4096 < len(BIG) < 64 * 1024
    headers = {**JSON, **forced("canary")}
    answer = await stack.client.post("/invocations", data=BIG, headers=headers)
    assert answer.status == 200
    assert await answer.json() == {"predictions": [40.0]}
    assert answer.headers["X-Model-Version"] == "2"
    assert stack.canary.seen[-1] == BIG
    await stack.servers["canary"].close()
    moved = await stack.client.post("/invocations", data=BIG, headers=headers)
    assert moved.status == 200
    assert moved.headers["X-Model-Variant"] == "stable"
    assert stack.stable.seen[-1] == BIG
    too_big = await stack.client.post("/invocations", data=b"x" * 70_000, headers=JSON)
    assert too_big.status == 413
    assert (await too_big.json())["error_code"] == "REQUEST_LIMIT_EXCEEDED"


async def test_large_bodies_reach_the_model_while_the_client_still_sends(stack: Stack) -> None:
    """The router holds no large body whole: the model server has the first bytes before the
    client sends the second half; a client vanishing mid-body leaves the next one unharmed."""
    host, port = "127.0.0.1", stack.client.server.port

    def head(client: str) -> bytes:
        return (
            "POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"X-Force-Variant: stable\r\nX-Force-Token: {FORCE_TOKEN}\r\nX-Client: {client}\r\n"
            f"Content-Length: {len(BIG)}\r\n\r\n"
        ).encode()

    _, vanishing = await asyncio.open_connection(host, port)
    vanishing.write(head("vanishing") + BIG[:10_000])
    await vanishing.drain()
    vanishing.close()
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(head("staying") + BIG[:10_000])
    await writer.drain()
    # The first half reaches the model server while the client holds the rest back.
    await wait_until(lambda: "staying" in stack.stable.receiving, "first bytes at the model")
    writer.write(BIG[10_000:])
    await writer.drain()
    assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 200")
    writer.close()
    assert stack.stable.seen[-1] == BIG


async def test_chunked_uploads_are_answered(stack: Stack) -> None:
    """A body of unknown length (chunked) is relayed and answered like any other."""

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(BIG), 5_000):
            yield BIG[start : start + 5_000]

    answer = await stack.client.post(
        "/invocations", data=pieces(), headers={**JSON, **forced("canary")}
    )
    assert answer.status == 200
    assert answer.headers["X-Model-Variant"] == "canary"
    assert stack.canary.seen[-1] == BIG


async def test_killing_the_canary_under_load_fails_no_request(stack: Stack) -> None:
    """64 clients keep sending while the canary dies: every request is answered 200 (the retry
    budget is a share of recent traffic, not of the requests in flight)."""
    await stack.apply(50)
    statuses: list[int] = []
    stop = asyncio.Event()
    loaders = _keep_loading(stack, statuses, stop, clients=64)
    await wait_until(lambda: stack.count("canary", "2") >= 64, "the canary under load")
    await stack.servers["canary"].close()
    closed_at = len(statuses)
    await wait_until(lambda: len(statuses) > closed_at + 1000, "1,000 answers after the kill")
    stop.set()
    await asyncio.gather(*loaders)
    assert len(statuses) > 100
    assert set(statuses) == {200}, collections.Counter(statuses)
    # Taken out of service by whichever came first, a failed request (failover, ejection) or
    # the active /ping; failovers themselves are counted exactly in the test above.
    health = await (await stack.client.get("/health")).json()
    assert health["upstreams"]["canary"]["healthy"] is False


async def test_a_hanging_canary_is_retried_on_stable(stack: Stack) -> None:
    """A canary silent past the timeout costs the client only the wait: stable answers."""
    stack.canary.delay = 3.0
    (answer,) = await _post(stack, 1, forced("canary"))
    assert answer.status == 200
    assert answer.headers["X-Model-Variant"] == "stable"
    assert (
        stack.value("mlcanary_upstream_errors_total", {"variant": "canary", "reason": "timeout"})
        == 1
    )


async def test_expect_continue_and_http10_clients_are_served(stack: Stack) -> None:
    """A client waiting for 100 Continue gets it at once; an HTTP/1.0 client gets its answer
    and the connection closed."""
    host, port = "127.0.0.1", stack.client.server.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(BODY)
    )
    await writer.drain()
    assert (await asyncio.wait_for(reader.readline(), 30)).startswith(b"HTTP/1.1 100")
    await asyncio.wait_for(reader.readline(), 30)  # the blank line after the interim answer
    writer.write(BODY)
    await writer.drain()
    assert (await asyncio.wait_for(reader.readline(), 5)).split(b" ")[1] == b"200"
    writer.close()

    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        b"POST /invocations HTTP/1.0\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
    )
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)  # read() returns once the router closes
    assert answer.split(b" ")[1] == b"200"
    assert answer.endswith(b'{"predictions": [30.0]}') or answer.endswith(
        b'{"predictions": [40.0]}'
    )
    writer.close()


async def test_pipelined_requests_are_answered_in_order(stack: Stack) -> None:
    """Three requests sent at once on one connection, the first one slow: the answers come back
    in request order, each whole, whichever upstream finished first."""
    stack.stable.delay = 0.3
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.client.server.port)

    def invocation(variant: bytes) -> bytes:
        return (
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"X-Force-Variant: %s\r\nX-Force-Token: %s\r\nContent-Length: %d\r\n\r\n%s"
            % (variant, FORCE_TOKEN.encode(), len(BODY), BODY)
        )

    writer.write(
        invocation(b"stable") + b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n" + invocation(b"canary")
    )
    await writer.drain()
    bodies = []
    for _ in range(3):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        bodies.append(await asyncio.wait_for(reader.readexactly(length), 5))
    writer.close()
    assert json.loads(bodies[0]) == {"predictions": [30.0]}
    assert b"predictions" not in bodies[1]
    assert json.loads(bodies[2]) == {"predictions": [40.0]}


async def test_a_failing_stable_is_not_hammered_by_retries(stack: Stack) -> None:
    """Canary and stable both answering 503: of 1,000 requests forced to the canary, stable
    gets the retry budget's share (a fifth plus 10 a second), not 1,000."""
    stack.canary.status = stack.stable.status = 503
    answers = await _post(stack, 1000, forced("canary"))
    assert {answer.status for answer in answers} == {503}
    retried = len(stack.stable.seen)
    assert 100 <= retried <= 0.2 * 1000 + 10 * 10
    assert stack.value("mlcanary_failovers_total", {"from_variant": "canary"}) == retried


@dataclass(frozen=True)
class OutcomeCase:
    """How the upstreams behave, and what the client must get on the buffered and streamed
    paths (a streamed body is gone once sent: only an unreachable canary fails over)."""

    name: str
    forced: str
    setup: Callable[[Stack], Awaitable[None]]
    buffered: tuple[int, str, str | None]
    """Status, answering variant, error_code (None: the upstream's own answer passed on)."""
    streamed: tuple[int, str, str | None] | None = None


async def _nothing(_stack: Stack) -> None:
    return None


def _status(variant: str, status: int) -> Callable[[Stack], Awaitable[None]]:
    async def setup(stack: Stack) -> None:
        getattr(stack, variant).status = status

    return setup


def _down(variant: str) -> Callable[[Stack], Awaitable[None]]:
    async def setup(stack: Stack) -> None:
        await stack.servers[variant].close()

    return setup


def _hanging(variant: str) -> Callable[[Stack], Awaitable[None]]:
    async def setup(stack: Stack) -> None:
        getattr(stack, variant).delay = 3.0

    return setup


OUTCOMES = [
    OutcomeCase("canary answers", "canary", _nothing, (200, "canary", None)),
    OutcomeCase("canary refuses", "canary", _status("canary", 400), (400, "canary", None)),
    OutcomeCase(
        "canary 503", "canary", _status("canary", 503), (200, "stable", None),
        streamed=(503, "canary", None),
    ),
    OutcomeCase("canary down", "canary", _down("canary"), (200, "stable", None)),
    OutcomeCase(
        "canary hangs", "canary", _hanging("canary"), (200, "stable", None),
        streamed=(504, "canary", "DEADLINE_EXCEEDED"),
    ),
    OutcomeCase("stable 503", "stable", _status("stable", 503), (503, "stable", None)),
    OutcomeCase(
        "stable down", "stable", _down("stable"), (503, "stable", "TEMPORARILY_UNAVAILABLE")
    ),
    OutcomeCase(
        "stable hangs", "stable", _hanging("stable"), (504, "stable", "DEADLINE_EXCEEDED")
    ),
]  # fmt: skip


@pytest.mark.parametrize("path", ["buffered", "streamed"])
@pytest.mark.parametrize("case", OUTCOMES, ids=[case.name for case in OUTCOMES])
async def test_one_outcome_one_answer_on_every_path(
    stack: Stack, case: OutcomeCase, path: str
) -> None:
    """The same upstream outcome gets the same answer on the raw fast path, the aiohttp plane
    and streamed bodies: status, variant, version and MLflow-shaped error."""
    await case.setup(stack)
    body = BODY if path == "buffered" else BIG
    answer = await stack.client.post(
        "/invocations", data=body, headers={**JSON, **forced(case.forced)}
    )
    data = await answer.read()
    status, variant, error_code = (
        case.streamed if path == "streamed" and case.streamed else case.buffered
    )
    assert (answer.status, answer.headers["X-Model-Variant"]) == (status, variant)
    assert answer.headers.getall("X-Model-Version") == ["1" if variant == "stable" else "2"]
    if error_code is not None:
        document = json.loads(data)
        assert document["error_code"] == error_code
        assert f"the {variant} model server" in document["message"]
    elif status == 200:
        assert json.loads(data) == {"predictions": [30.0 if variant == "stable" else 40.0]}
    else:
        assert json.loads(data)["message"] == f"upstream {getattr(stack, variant).version} says no"
    assert stack.forced_count(variant, "1" if variant == "stable" else "2", str(status)) == 1
