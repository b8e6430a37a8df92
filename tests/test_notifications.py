"""Notifications: every event to every sink once, signed, in order, never holding up the controller.

Real HTTP receivers (aiohttp servers on loopback) take the events. The signature is checked with
`verified`, the receiver's side as the README shows it. A receiver that is down, slow or
refusing delays only its own queue; its backlog drains in order when it returns. Then a real
controller with `--notify`: a change, a deploy refused by its checks and a rollout each reach
the receiver, and a rollback is answered while the receiver holds every delivery.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from controller.notifications import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    NotificationMetrics,
    Notifier,
    Sink,
)
from tests.conftest import TrainedRegistry
from tests.helpers import free_port
from tests.routers import wait_until
from tests.systems import copied_registry, running_system

ServerFactory = Callable[..., Awaitable[TestServer]]
SECRET = b"a shared secret"


def verified(secret: bytes, body: bytes, header: str, now: float, tolerance_s: float = 300) -> bool:
    """The receiver's check, as the README gives it: the HMAC of `<t>.<body>`, and a fresh t."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    timestamp = int(fields["t"])
    expected = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"]) and abs(now - timestamp) <= tolerance_s


@dataclass
class Receiver:
    """A webhook receiver: what it took, and whether it answers yet."""

    taken: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    status: int = 200
    held: asyncio.Event = field(default_factory=asyncio.Event)
    """Set: answer; clear: hold every request until set (a slow receiver)."""

    def __post_init__(self) -> None:
        self.held.set()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{path:.*}", self.take)
        return app

    async def take(self, request: web.Request) -> web.Response:
        body = await request.read()
        await self.held.wait()
        if self.status == 200:
            self.taken.append((dict(request.headers), body))
        return web.Response(status=self.status)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _headers, body in self.taken]


REGISTRIES: dict[int, CollectorRegistry] = {}


def notifier(*urls: str, **options: Any) -> tuple[Notifier, aiohttp.ClientSession]:
    session = aiohttp.ClientSession()
    registry = CollectorRegistry()
    metrics = NotificationMetrics.create(registry)
    made = Notifier(
        tuple(Sink.parse(url) for url in urls), SECRET, session, metrics, "Model",
        page_url="http://127.0.0.1:8001/", first_backoff_s=0.05, max_backoff_s=0.2, **options,
    )  # fmt: skip
    REGISTRIES[id(made)] = registry
    return made, session


def counted(sent: Notifier, result: str, kind: str = "webhook") -> float:
    """A delivery counter's value, as /metrics shows it."""
    registry = REGISTRIES[id(sent)]
    return registry.get_sample_value("mlcanary_notifications_total",
                                     {"kind": kind, "result": result}) or 0.0  # fmt: skip


def backlog(sent: Notifier) -> float:
    return REGISTRIES[id(sent)].get_sample_value("mlcanary_notification_backlog") or 0.0


def record(number: int) -> dict[str, Any]:
    return {"action": "weight", "reason": f"change {number}", "before": None, "after": None}


async def test_every_event_is_delivered_once_signed_and_in_order(
    aiohttp_server: ServerFactory,
) -> None:
    receiver = Receiver()
    server = await aiohttp_server(receiver.app())
    sent, session = notifier(str(server.make_url("/hook")))
    try:
        for number in range(20):
            sent.publish(record(number))
        await wait_until(lambda: len(receiver.taken) == 20, "20 deliveries")
    finally:
        await sent.close()
        await session.close()
    events = receiver.events()
    assert [event["record"]["reason"] for event in events] == [f"change {n}" for n in range(20)]
    assert len({headers[DELIVERY_HEADER] for headers, _body in receiver.taken}) == 20
    for headers, body in receiver.taken:
        assert verified(SECRET, body, headers[SIGNATURE_HEADER], time.time())
        assert not verified(SECRET, body.replace(b"change", b"chance"), headers[SIGNATURE_HEADER],
                            time.time())  # fmt: skip
        assert not verified(b"another secret", body, headers[SIGNATURE_HEADER], time.time())
        assert not verified(SECRET, body, headers[SIGNATURE_HEADER], time.time() + 3600)
    assert events[0]["summary"] == "Model: weight: change 0"
    assert counted(sent, "delivered") == 20


async def test_a_receiver_that_is_down_gets_its_backlog_in_order_when_it_returns(
    aiohttp_server: ServerFactory,
) -> None:
    port = free_port()
    sent, session = notifier(f"http://127.0.0.1:{port}/hook")
    receiver = Receiver()
    try:
        for number in range(5):
            sent.publish(record(number))  # returns at once: nothing listens yet
        pending = [d.state for d in sent.recent]
        assert pending == ["pending"] * 5
        await wait_until(lambda: sent.recent[0].attempts >= 2, "a retry of the first event")
        assert backlog(sent) == 5
        await aiohttp_server(receiver.app(), port=port)
        await wait_until(lambda: len(receiver.taken) == 5, "the backlog")
    finally:
        await sent.close()
        await session.close()
    assert [e["record"]["reason"] for e in receiver.events()] == [f"change {n}" for n in range(5)]
    assert backlog(sent) == 0


async def test_a_slow_or_refusing_sink_delays_only_itself(aiohttp_server: ServerFactory) -> None:
    slow, fast, refusing = Receiver(), Receiver(), Receiver(status=400)
    slow.held.clear()
    servers = [await aiohttp_server(r.app()) for r in (slow, fast, refusing)]
    urls = [str(server.make_url("/hook")) for server in servers]
    sent, session = notifier(*urls, attempts=2)
    try:
        for number in range(3):
            sent.publish(record(number))
        # The fast sink has all three while the slow one still holds the first.
        await wait_until(lambda: len(fast.taken) == 3, "the fast sink")
        assert slow.taken == []
        refused = [d for d in sent.recent if d.sink == Sink.parse(urls[2]).shown]
        await wait_until(lambda: all(d.state == "failed" for d in refused), "refusals settled")
        assert all(d.attempts == 2 and d.last_error == "answered 400" for d in refused)
        slow.held.set()
        await wait_until(lambda: len(slow.taken) == 3, "the slow sink")
    finally:
        await sent.close()
        await session.close()
    assert counted(sent, "failed") == 3


async def test_the_queue_is_bounded_and_drops_the_oldest_counted() -> None:
    sent, session = notifier(f"http://127.0.0.1:{free_port()}/hook", max_queue=3)
    try:
        for number in range(5):
            sent.publish(record(number))
        states = {d.state for d in list(sent.recent)[:2]}
        assert states == {"dropped"}
        assert counted(sent, "dropped") == 2
        assert backlog(sent) == 3
    finally:
        await sent.close()
        await session.close()


async def test_slack_gets_one_line_with_a_link_and_its_url_is_never_shown(
    aiohttp_server: ServerFactory,
) -> None:
    receiver = Receiver()
    server = await aiohttp_server(receiver.app())
    secret_path = "/services/T000/B000/XXXXSECRET"  # noqa: S105 (a made-up one)
    sent, session = notifier(f"slack+{server.make_url(secret_path)}")
    try:
        sent.publish({"action": "rollout-rolled-back", "reason": "prediction_psi failed"})
        await wait_until(lambda: len(receiver.taken) == 1, "the message")
    finally:
        await sent.close()
        await session.close()
    (message,) = receiver.events()
    assert message == {"text": "Model: rollout-rolled-back: prediction_psi failed "
                               "<http://127.0.0.1:8001/|open the page>"}  # fmt: skip
    shown = json.dumps(sent.state())
    assert "XXXXSECRET" not in shown and "slack+http://127.0.0.1" in shown
    assert SIGNATURE_HEADER not in receiver.taken[0][0]  # Slack's format is not signed


@pytest.mark.parametrize(
    "bad", ["ftp://example.com/hook", "slack+mailto:ops@example.com", "https://", "hooks"]
)
def test_a_bad_sink_url_is_refused_naming_it(bad: str) -> None:
    with pytest.raises(ValueError, match="notification URL must be"):
        Sink.parse(bad)


def test_a_sink_is_shown_without_its_credentials_path_or_query() -> None:
    sink = Sink.parse("https://user:pw@hooks.example.com:8443/path/secret?token=abc")
    assert sink.shown == "https://hooks.example.com:8443/***"


@pytest.mark.slow
async def test_a_controller_tells_every_event_and_never_waits_for_the_receiver(
    aiohttp_server: ServerFactory, trained_registry: TrainedRegistry, tmp_path: Path
) -> None:
    """A real controller with `--notify`: a deploy and a rollback are answered while the
    receiver holds every delivery; then each arrives signed. A deploy refused by its checks and
    a rollout (with its own `--notify`) are told too."""
    receiver, rollout_receiver = Receiver(), Receiver()
    receiver.held.clear()  # the receiver answers nothing until the changes are made
    hook = str((await aiohttp_server(receiver.app())).make_url("/hook"))
    rollout_hook = str((await aiohttp_server(rollout_receiver.app())).make_url("/rollout"))
    secret_file = tmp_path / "notify-secret"
    secret_file.write_bytes(SECRET + b"\n")
    folder = tmp_path / "registry"
    folder.mkdir()
    options = ("--notify", hook, "--notify-secret-file", str(secret_file))
    with running_system(copied_registry(trained_registry.settings, folder), tmp_path,
                        controller_options=options) as system:  # fmt: skip
        for path, body in (("/api/deploy", {"version": "2", "weight": 10}),
                           ("/api/rollback", {"reason": "told, not waited for"})):  # fmt: skip
            code, answer = await asyncio.to_thread(system.admin, "POST", path, body)
            assert code == 200, answer
        assert receiver.taken == []  # both changes made while every delivery was held
        receiver.held.set()
        await wait_until(lambda: len(receiver.taken) >= 2, "the two changes told", 60)
        code, answer = await asyncio.to_thread(
            system.admin, "POST", "/api/deploy",
            {"version": "2", "weight": 0, "url": f"http://127.0.0.1:{free_port()}"},
        )  # fmt: skip
        assert code != 200, answer
        done = await asyncio.to_thread(
            system.cli, "rollout", "start", "--steps", "100", "--interval", "1s",
            "--min-requests", "15", "--max-insufficient", "1", "--notify", rollout_hook,
        )  # fmt: skip
        assert done.returncode == 1, done.stdout + done.stderr
        told = ["rollout-start", "rollout-judgement", "rollout-rolled-back"]

        def actions(taken: Receiver) -> list[str]:
            return [event["event"] for event in taken.events()]

        await wait_until(lambda: actions(rollout_receiver) == told, "the rollout told", 60)
        await wait_until(lambda: "rollout-rolled-back" in actions(receiver), "all told", 60)
        overview = await asyncio.to_thread(system.admin, "GET", "/api/overview")
        status = await asyncio.to_thread(system.cli, "status")
        as_json = json.loads((await asyncio.to_thread(system.cli, "status", "--json")).stdout)
    assert "(signed); last" in status.stdout and "delivered" in status.stdout, status.stdout
    assert "/hook" not in status.stdout
    assert as_json["notifications"]["sinks"] == [Sink.parse(hook).shown]
    assert {d["state"] for d in as_json["notifications"]["recent"]} == {"delivered"}
    assert actions(receiver)[:3] == ["deploy", "rollback", "deploy-failed"]
    assert set(told) <= set(actions(receiver))
    for headers, body in receiver.taken:
        assert verified(SECRET, body, headers[SIGNATURE_HEADER], time.time())
    ended = receiver.events()[actions(receiver).index("rollout-rolled-back")]
    assert (
        ended["record"]["status"] == "rolled_back" and ended["model"] == system.settings.model_name
    )
    shown = overview[1]["notifications"]
    assert shown["signed"] and shown["sinks"] == [Sink.parse(hook).shown]
    assert {d["state"] for d in shown["recent"]} == {"delivered"}
    assert "/rollout" not in json.dumps(overview[1])  # a sink's path is never shown
