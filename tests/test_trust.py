"""Trust boundaries that need no model: credentials never shown, names the controller answers
to, anonymous reads that never write, file modes."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from common.files import append_fsynced
from common.redaction import redact
from common.settings import read_settings
from contracts.errors import error_body
from contracts.routing import RoutingConfig, write_routing_file
from controller.api import Tokens, create_api
from controller.feedback import LabelBook
from controller.hosts import host_names, is_allowed
from router.settings import RouterSettings
from router.web.app import create_app

SECRET_URI = "postgresql://mlflow:s3cret@db.internal:5432/mlflow?sslmode=require&token=abc123"  # noqa: S105


def test_credentials_in_uris_are_hidden_wherever_text_is_shown() -> None:
    assert redact(SECRET_URI) == (
        "postgresql://***@db.internal:5432/mlflow?sslmode=require&token=***"
    )
    said = "cannot reach https://u:p@host/a and s3://b/k?X-Amz-Signature=f00&X-Amz-Date=1"
    assert redact(said) == (
        "cannot reach https://***@host/a and s3://b/k?X-Amz-Signature=***&X-Amz-Date=1"
    )
    assert redact("http://127.0.0.1:5000/api and a=b") == "http://127.0.0.1:5000/api and a=b"
    assert b"s3cret" not in error_body("BAD_REQUEST", f"the registry at {SECRET_URI} is down")


async def test_the_router_shows_the_mlflow_uri_without_its_credentials(tmp_path: Path) -> None:
    """`/` and `/health` keep `mlflow_uri` (the original app's shape), redacted."""
    path = tmp_path / "routing.yaml"
    write_routing_file(path, RoutingConfig.model_validate({
        "model": "m", "stable": {"url": "http://127.0.0.1:9", "version": "1"},
    }))  # fmt: skip
    system = read_settings({"MLFLOW_TRACKING_URI": SECRET_URI, "MLCANARY_HOME": str(tmp_path)})
    app = create_app(RouterSettings(config_path=path), system=system)
    async with TestClient(TestServer(app)) as client:
        for page in ("/", "/health"):
            answer = await client.get(page)
            text = await answer.text()
            assert "s3cret" not in text and "abc123" not in text, page
            assert json.loads(text)["mlflow_uri"] == redact(SECRET_URI), page


class StandInController:
    """What the admin API reads of a controller, recording whether anything was written."""

    def __init__(self) -> None:
        self.writes: list[str] = []
        self.session: aiohttp.ClientSession | None = None
        self.settings = SimpleNamespace(routers=SimpleNamespace(urls=self._no_routers))

    async def _no_routers(self) -> list[str]:
        return []

    async def status(self) -> dict[str, Any]:
        return {
            "model": "m", "config_version": "v",
            "stable": {"url": "http://10.0.0.7:5101", "version": "1"},
            "canary": {"url": f"{SECRET_URI}", "version": "2", "weight": 10.0},
            "routers": {"http://10.0.0.9:8000": {"config_version": "v", "in_step": True}},
            "aliases": {"error": f"the registry at {SECRET_URI} cannot be read"},
            "runtime": "local",
            "pending": [{"number": 3, "action": "deploy", "reason": "r", "stage": "starting",
                         "arguments": {"url": "http://10.0.0.8:5102"}}],
            "recent_changes": [{"time": "t", "action": "deploy", "reason": "r",
                                "arguments": {"url": "http://10.0.0.8:5102"}}],
        }  # fmt: skip

    async def ensure_prediction_buckets(self) -> None:
        self.writes.append("prediction buckets")


@pytest.fixture
async def admin_api(tmp_path: Path) -> Any:
    controller = StandInController()
    labels = LabelBook(tmp_path / "predictions", tmp_path / "labels.jsonl", CollectorRegistry())
    rollout = SimpleNamespace(state=None)
    app = create_api(
        cast(Any, controller), Tokens("admin", "labels"), cast(Any, rollout), CollectorRegistry(),
        labels, host_names("0.0.0.0", ("controller", "mlcanary.example.org")),  # noqa: S104
    )  # fmt: skip
    async with TestClient(TestServer(app)) as client:
        yield client, controller


async def test_anonymous_reads_show_no_internal_url_and_write_nothing(admin_api: Any) -> None:
    client, controller = admin_api
    for _ in range(3):
        answer = await client.get("/api/overview")
        assert answer.status == 200
        text = await answer.text()
        for private in ("s3cret", "10.0.0.", "arguments"):
            assert private not in text, private
        await asyncio.sleep(0)  # let the page's sampler run a round
    overview = json.loads(text)
    assert overview["canary"] == {"version": "2", "weight": 10.0}
    assert list(overview["routers"]) == ["router 1"]

    async def sampled() -> bool:
        return bool((await (await client.get("/api/overview")).json())["live"]["problem"])

    deadline = asyncio.get_running_loop().time() + 30
    while not await sampled():  # the sampler has read (and failed to read) the routers
        assert asyncio.get_running_loop().time() < deadline, "the sampler never ran"
        await asyncio.sleep(0.05)
    assert controller.writes == []
    answer = await client.get("/api/status", headers={"Authorization": "Bearer admin"})
    status = await answer.json()
    assert status["stable"]["url"] == "http://10.0.0.7:5101"  # the admin API shows it all...
    assert "s3cret" not in json.dumps(status)  # ...but never a credential


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("127.0.0.1:8001", 200), ("localhost", 200), ("[::1]:8001", 200),
        ("10.1.2.3:8001", 200), ("controller:8001", 200), ("MLCANARY.example.org.", 200),
        ("evil.example", 400), ("localhost.evil.example", 400), ("", 400),
    ],
)  # fmt: skip
async def test_the_controller_answers_only_to_its_names(
    admin_api: Any, host: str, status: int
) -> None:
    client, _ = admin_api
    answer = await client.get("/api/overview", headers={"Host": host})
    assert answer.status == status, await answer.text()
    if status == 400:
        assert "--allowed-host" in (await answer.json())["message"]


def test_host_names() -> None:
    names = host_names("127.0.0.1")
    assert is_allowed("localhost:8001", names) and is_allowed("[::1]", names)
    assert not is_allowed("mlcanary.local", names) and not is_allowed(None, names)
    assert is_allowed("mlcanary.local", host_names("mlcanary.local"))


def test_logs_are_created_private_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        path = tmp_path / "predictions" / "2026-12-05" / "07-router.jsonl"
        append_fsynced(path, b"{}\n")
        append_fsynced(path, b"{}\n")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o750
    assert path.read_bytes() == b"{}\n{}\n"
