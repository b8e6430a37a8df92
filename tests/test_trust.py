"""Trust boundaries that need no model: credentials never shown, names the controller answers
to, anonymous reads that never write, file modes."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from common.files import append_fsynced
from common.predictionlog import file_for, read_predictions
from common.redaction import redact
from common.settings import read_settings
from contracts.errors import error_body
from contracts.routing import RoutingConfig, write_routing_file
from controller.api import Tokens, create_api
from controller.feedback import LabelBook
from controller.hosts import host_names, is_allowed
from router.predictionlog.upload import retry_wait
from router.settings import RouterSettings
from router.web.app import create_app
from router.web.state import UPLOADER

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
        self.settings = SimpleNamespace(
            routers=SimpleNamespace(urls=self._no_routers), notifier=None
        )

    async def _no_routers(self) -> list[str]:
        return []

    async def status(self) -> dict[str, Any]:
        return {
            "model": "m", "config_version": "v",
            "stable": {"url": "http://10.0.0.7:5101", "version": "1", "protocols": ["mlflow"]},
            "canary": {"url": f"{SECRET_URI}", "version": "2", "weight": 10.0,
                       "protocols": ["mlflow", "v2"]},
            "routers": {"http://10.0.0.9:8000": {"config_version": "v", "in_step": True}},
            "aliases": {"error": f"the registry at {SECRET_URI} cannot be read"},
            "runtime": "local",
            "pending": [{"number": 3, "action": "deploy", "reason": "r", "stage": "starting",
                         "arguments": {"url": "http://10.0.0.8:5102"}}],
            "recent_changes": [{"time": "t", "action": "deploy", "reason": "r",
                                "arguments": {"url": "http://10.0.0.8:5102"}}],
            "notifications": {"sinks": [], "signed": False, "recent": []},
        }  # fmt: skip

    async def ensure_prediction_buckets(self) -> None:
        self.writes.append("prediction buckets")


@pytest.fixture
async def admin_api(tmp_path: Path) -> Any:
    controller = StandInController()
    labels = LabelBook(tmp_path / "predictions", tmp_path / "labels.jsonl", CollectorRegistry())
    rollout = SimpleNamespace(state=None, active=lambda: False)
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
    # What the page shows of the split: versions, weight and the protocols spoken, no URL.
    assert overview["canary"] == {"version": "2", "weight": 10.0, "protocols": ["mlflow", "v2"]}
    assert overview["notifications"] == {"sinks": [], "signed": False, "recent": []}
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


def test_retry_waits_double_up_to_five_minutes() -> None:
    assert [retry_wait(10, n) for n in range(7)] == [10, 20, 40, 80, 160, 300, 300]
    assert retry_wait(600, 3) == 600  # an interval longer than the cap is kept
    assert retry_wait(0.05, 10_000) == 300


class NoCredentialsError(Exception):
    """What botocore raises without credentials: not an OSError."""


async def test_the_upload_loop_survives_any_error_and_says_so(tmp_path: Path) -> None:
    """A round failing with a non-OSError (its message naming a URL with a password) is
    counted, shown redacted in /health with the backlog, retried later; once the store answers,
    everything spooled is uploaded."""
    path = tmp_path / "routing.yaml"
    write_routing_file(path, RoutingConfig.model_validate({
        "model": "m", "stable": {"url": "http://127.0.0.1:9", "version": "1"},
    }))  # fmt: skip
    store = f"memory://{tmp_path.name}/predictions"  # an object store, in this process
    settings = RouterSettings(
        config_path=path, prediction_log=store, prediction_log_spool=tmp_path / "spool",
        prediction_log_upload_s=0.05,
    )  # fmt: skip
    registry = CollectorRegistry()
    app = create_app(settings, registry=registry, system=read_settings({}))
    uploader = app[UPLOADER]
    assert uploader is not None
    failures_left = [3]
    pipe_file = uploader.filesystem.pipe_file

    def failing(*args: Any, **kwargs: Any) -> Any:
        if failures_left[0] > 0:
            failures_left[0] -= 1
            raise NoCredentialsError("no credentials for https://key:hunter2@s3.example/b")
        return pipe_file(*args, **kwargs)

    uploader.filesystem.pipe_file = failing
    now = time.time()
    spooled = file_for(uploader.folder, uploader.folder.name, now)
    spooled.parent.mkdir(parents=True, exist_ok=True)
    spooled.write_bytes(b'{"request_id":"r1","time":%f,"variant":"stable","version":"1",'
                        b'"inputs":{},"answer":{"predictions":[1]}}\n' % now)  # fmt: skip
    async with TestClient(TestServer(app)) as client:
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            health = await (await client.get("/health")).json()
            upload = health["prediction_log_upload"]
            if upload["failures"] >= 1 and upload["backlog_bytes"] > 0:
                break
            assert asyncio.get_running_loop().time() < deadline, health
            await asyncio.sleep(0.02)
        assert "NoCredentialsError" in upload["last_error"]
        assert "hunter2" not in json.dumps(health) and "***@s3.example" in upload["last_error"]
        while [r.request_id for r in read_predictions(store)] != ["r1"]:
            assert asyncio.get_running_loop().time() < deadline, "never uploaded"
            await asyncio.sleep(0.02)
        while (await (await client.get("/health")).json())["prediction_log_upload"] != {
            "backlog_bytes": 0, "failures": 0, "last_error": None,
        }:  # fmt: skip
            assert asyncio.get_running_loop().time() < deadline, "never shown as caught up"
            await asyncio.sleep(0.02)
    failed = registry.get_sample_value(
        "mlcanary_prediction_log_uploads_total", {"result": "failed"}
    )
    assert failed == 3
    assert registry.get_sample_value("mlcanary_prediction_log_upload_backlog_bytes") == 0
