"""The controller's Kubernetes parts (the ConfigMap store, routers found from a Service's
Endpoints), through the official client, against a stand-in API server.

No cluster is reachable here: a small aiohttp app serves the endpoints they use (a ConfigMap's
GET and PATCH, an Endpoints' GET), and a kubeconfig points the real `kubernetes` client at it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from contracts.routing import (
    RoutingConfig,
    content_version,
    parse_routing,
    render_routing,
    write_routing_file,
)
from controller.errors import ControllerError
from controller.rollout.window import take_snapshot
from controller.routers import EndpointRouters, wait_for_routers
from controller.stores import CONFIGMAP_KEY, ConfigMapStore
from router.settings import RouterSettings
from router.web.app import create_app
from tests.routers import running_front

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
TOKEN = "stand-in-token"  # noqa: S105 (a test credential for a test server)
SPLIT = RoutingConfig.model_validate(
    {
        "model": "StudentExamPredictor",
        "stable": {"url": "http://model-stable:8080", "version": "1"},
        "canary": {"url": "http://model-canary:8080", "version": "2", "weight": 10},
    }
)


@dataclass
class StandInApi:
    """ConfigMaps by (namespace, name); every request's method, path and auth recorded."""

    maps: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    endpoints: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    seen: list[tuple[str, str, str, str]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        path = "/api/v1/namespaces/{namespace}/configmaps/{name}"
        app.router.add_get(path, self.get)
        app.router.add_patch(path, self.patch)
        app.router.add_get("/api/v1/namespaces/{namespace}/endpoints/{name}", self.get_endpoints)
        return app

    async def get_endpoints(self, request: web.Request) -> web.Response:
        key = self._key(request)
        if key not in self.endpoints:
            return web.json_response({"kind": "Status", "code": 404}, status=404)
        return web.json_response(self.endpoints[key])

    def _key(self, request: web.Request) -> tuple[str, str]:
        self.seen.append(
            (request.method, request.path, request.headers.get("Authorization", ""),
             request.headers.get("Content-Type", ""))
        )  # fmt: skip
        return request.match_info["namespace"], request.match_info["name"]

    async def get(self, request: web.Request) -> web.Response:
        key = self._key(request)
        if key not in self.maps:
            return web.json_response(
                {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                 "code": 404, "message": f'configmaps "{key[1]}" not found'},
                status=404,
            )  # fmt: skip
        return web.json_response(self.maps[key])

    async def patch(self, request: web.Request) -> web.Response:
        key = self._key(request)
        if key not in self.maps:
            return web.json_response({"kind": "Status", "code": 404}, status=404)
        change = await request.json()
        self.maps[key]["data"] = {**self.maps[key].get("data", {}), **change.get("data", {})}
        self.maps[key]["metadata"]["resourceVersion"] = str(
            int(self.maps[key]["metadata"]["resourceVersion"]) + 1
        )
        return web.json_response(self.maps[key])


def configmap(namespace: str, name: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": "1"},
        "data": data,
    }


@pytest.fixture
async def api(
    aiohttp_server: ServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> StandInApi:
    """The stand-in server, and a kubeconfig naming it (what `kubectl` users have)."""
    stand_in = StandInApi()
    server = await aiohttp_server(stand_in.app())
    url = str(server.make_url("")).rstrip("/")
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "stand-in", "cluster": {"server": url}}],
        "users": [{"name": "tester", "user": {"token": TOKEN}}],
        "contexts": [{"name": "here", "context": {"cluster": "stand-in", "user": "tester",
                                                  "namespace": "canary"}}],
        "current-context": "here",
    }  # fmt: skip
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig))
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return stand_in


async def test_the_store_reads_and_patches_the_routing_file(api: StandInApi) -> None:
    api.maps[("canary", "mlcanary-routing")] = configmap(
        "canary", "mlcanary-routing", {CONFIGMAP_KEY: render_routing(SPLIT).decode()}
    )
    store = ConfigMapStore("mlcanary-routing", "canary")
    assert await store.exists()
    config, version = await store.load()
    assert config == SPLIT and version == content_version(render_routing(SPLIT))
    moved = SPLIT.model_copy(update={"canary": SPLIT.canary.model_copy(update={"weight": 50.0})})  # type: ignore[union-attr]
    new_version = await store.save(moved)
    stored = api.maps[("canary", "mlcanary-routing")]["data"][CONFIGMAP_KEY].encode()
    assert parse_routing(stored, "stand-in") == moved
    assert new_version == content_version(stored)  # what a router reading the volume will report
    methods = [(method, path) for method, path, _, _ in api.seen]
    assert methods[-1] == ("PATCH", "/api/v1/namespaces/canary/configmaps/mlcanary-routing")
    assert {auth for _, _, auth, _ in api.seen} == {f"Bearer {TOKEN}"}
    assert api.seen[-1][3].startswith("application/strategic-merge-patch+json") or api.seen[-1][
        3
    ].startswith("application/merge-patch+json")


async def test_a_missing_or_invalid_configmap_is_a_clear_error(api: StandInApi) -> None:
    store = ConfigMapStore("mlcanary-routing")  # the kubeconfig's namespace
    assert store.namespace == "canary"
    assert not await store.exists()
    with pytest.raises(ControllerError, match=r"configmap canary/mlcanary-routing.*\(404\)"):
        await store.load()
    api.maps[("canary", "mlcanary-routing")] = configmap(
        "canary", "mlcanary-routing", {CONFIGMAP_KEY: "model: x\nstable: {url: nope}\n"}
    )
    with pytest.raises(ControllerError, match=r"stable\.url"):
        await store.load()


async def test_an_unreachable_api_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "gone", "cluster": {"server": "http://127.0.0.1:9"}}],
        "users": [{"name": "u", "user": {"token": TOKEN}}],
        "contexts": [{"name": "c", "context": {"cluster": "gone", "user": "u"}}],
        "current-context": "c",
    }  # fmt: skip
    (tmp_path / "kubeconfig").write_text(json.dumps(kubeconfig))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    store = ConfigMapStore("mlcanary-routing")
    with pytest.raises(ControllerError, match="cannot be reached"):
        await store.save(SPLIT)


async def test_every_ready_router_pod_confirms_a_change_and_is_read(
    api: StandInApi, tmp_path: Path
) -> None:
    """`--router-endpoints router`: the controller finds two real routers as the ready addresses
    of the Service's Endpoints (not the not-ready one), waits for both to load a change, and
    reads both processes' metrics."""
    path = tmp_path / "routing.yaml"
    version = write_routing_file(path, SPLIT)
    async with AsyncExitStack() as stack:
        ports = []
        for _ in range(2):
            app = create_app(RouterSettings(config_path=path))
            ports.append((await stack.enter_async_context(running_front(app, fast_path=True))).port)
        api.endpoints[("canary", "router")] = {
            "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "router"},
            "subsets": [
                {"addresses": [{"ip": "127.0.0.1"}], "notReadyAddresses": [{"ip": "127.0.0.9"}],
                 "ports": [{"name": "http", "port": port, "protocol": "TCP"}]}
                for port in ports
            ],
        }  # fmt: skip
        routers = EndpointRouters("router")  # the kubeconfig's namespace
        urls = await routers.urls()
        assert urls == sorted(f"http://127.0.0.1:{port}" for port in ports)
        async with aiohttp.ClientSession() as session:
            await wait_for_routers(session, urls, version, within=30)
            snapshot = await take_snapshot(session, urls)
    assert len(snapshot.instances) == 2
    assert ("GET", "/api/v1/namespaces/canary/endpoints/router") in [
        (method, path) for method, path, _, _ in api.seen
    ]


async def test_a_missing_router_service_is_a_clear_error(api: StandInApi) -> None:
    with pytest.raises(ControllerError, match=r"endpoints canary/router.*\(404\)"):
        await EndpointRouters("router").urls()
