"""`mlcanary router --workers 2` scraped by the real Prometheus: one scrape answers for both
processes, counters never go back (not even across a worker killed and started again), the
counts and their increase between scrapes match what the client received, and a PromQL gate
judges a faulty canary behind them."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from common.supervision import process_table
from contracts.routing import RoutingConfig, write_routing_file
from controller.rollout.evidence import RolloutEvidence
from controller.rollout.gates import judge
from controller.rollout.judgement import GateLimits, Window
from controller.rollout.promql import window_from_prometheus
from tests.helpers import command_environment, free_port, wait_for_url, wait_until

pytestmark = pytest.mark.slow

ROW = b'{"inputs": [[1.0]]}'
CANARY_FAILS_EVERY = 5
"""The canary answers 500 to every fifth request: 20% errors, stable none."""
CLIENTS = 4
"""Client threads, each with one request in flight at a time."""
Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]
"""A scrape's counter and histogram samples by name and labels."""


class Upstreams:
    """A stable and a faulty canary model server stand-in, on a loop of their own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.runners: list[web.AppRunner] = []
        self.urls: list[str] = []
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Upstreams:
        self.thread.start()
        for fails in (False, True):
            asyncio.run_coroutine_threadsafe(self._start(fails), self.loop).result(30)
        return self

    async def _start(self, fails: bool) -> None:
        served = 0

        async def invocations(request: web.Request) -> web.Response:
            nonlocal served
            await request.read()
            served += 1
            if fails and served % CANARY_FAILS_EVERY == 0:
                return web.json_response({"error": "broken"}, status=500)
            return web.json_response({"predictions": [1.0]})

        async def ping(_request: web.Request) -> web.Response:
            return web.Response(text="\n")

        app = web.Application()
        app.router.add_post("/invocations", invocations)
        app.router.add_get("/ping", ping)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.runners.append(runner)
        host, port = runner.addresses[0][:2]
        self.urls.append(f"http://{host}:{port}")

    def __exit__(self, *_exc: object) -> None:
        for runner in self.runners:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


@dataclass
class Stack:
    router: str
    router_process: subprocess.Popen[bytes]
    prometheus: str


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is installed by `make system-deps`"
    with Upstreams() as upstreams:
        routing = tmp_path / "routing.yaml"
        stable, canary = upstreams.urls
        write_routing_file(routing, RoutingConfig.model_validate({
            "model": "M", "stable": {"url": stable, "version": "1"},
            "canary": {"url": canary, "version": "2", "weight": 50},
        }))  # fmt: skip
        port, prometheus_port = free_port(), free_port()
        # Every process's output, shown (by pytest, for a failed test) when it ends.
        router_log = (tmp_path / "router.log").open("wb")
        router = subprocess.Popen(
            [sys.executable, "-m", "mlcanary", "router", "--config", str(routing),
             "--port", str(port), "--workers", "2"],
            env=command_environment(tmp_path), stdout=router_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        config = {
            "global": {"scrape_interval": "1s"},
            "scrape_configs": [
                {"job_name": "router", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        prometheus = subprocess.Popen(
            [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{prometheus_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for_url(f"{url}/health")
            wait_until(lambda: len(_workers(router.pid)) == 1, "the second router process")
            prometheus_url = f"http://127.0.0.1:{prometheus_port}"
            wait_until(lambda: _scraped_once(prometheus_url), "Prometheus scraped the router once")
            yield Stack(url, router, prometheus_url)
        finally:
            prometheus.terminate()
            router.terminate()
            prometheus.wait(timeout=30)
            router.wait(timeout=60)
            router_log.close()
            print((tmp_path / "router.log").read_text())


def _workers(pid: int) -> list[int]:
    """Pids of the processes the router `pid` started to serve beside it."""
    return [
        stat.pid
        for stat in process_table()
        if stat.parent == pid and b"router" in Path(f"/proc/{stat.pid}/cmdline").read_bytes()
    ]


def _one(router: str) -> tuple[str, int]:
    """Send one request on a new connection (the kernel spreads them over both processes);
    return the variant and status of its answer."""
    request = urllib.request.Request(
        f"{router}/invocations", data=ROW, method="POST",
        headers={"Content-Type": "application/json", "Connection": "close"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.headers["X-Model-Variant"], answer.status
    except urllib.error.HTTPError as error:
        return error.headers["X-Model-Variant"], error.code


def _send(router: str, count: int) -> Counter[tuple[str, int]]:
    """Send `count` requests from 4 threads; count the answers by variant and status."""
    with ThreadPoolExecutor(CLIENTS) as pool:
        return Counter(pool.map(lambda _: _one(router), range(count)))


def _scraped(router: str) -> Scrape:
    """Every counter and histogram sample of one scrape (gauges change both ways)."""
    with urllib.request.urlopen(f"{router}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        if family.type in ("counter", "histogram")
        for sample in family.samples
    }


def _query(prometheus: str, expression: str) -> dict[str, float]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    with urllib.request.urlopen(url, timeout=5) as answer:
        result = json.loads(answer.read())["data"]["result"]
    return {item["metric"].get("variant", ""): float(item["value"][1]) for item in result}


def _scraped_once(prometheus: str) -> bool:
    """Whether Prometheus has scraped the router (so a window starts before the traffic)."""
    try:
        return _query(prometheus, 'up{job="router"}') == {"": 1.0}
    except OSError:
        return False


def _totals(answers: Counter[tuple[str, int]]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for (variant, _status), count in answers.items():
        totals[variant] = totals.get(variant, 0) + count
    return totals


def test_two_workers_add_up_for_prometheus_across_a_worker_killed(stack: Stack) -> None:
    scrapes = [_scraped(stack.router)]
    answers: Counter[tuple[str, int]] = Counter()
    for _ in range(10):  # 10 rounds of 100 requests, each followed by 2 scrapes
        answers += _send(stack.router, 100)
        scrapes += [_scraped(stack.router), _scraped(stack.router)]
    (killed,) = _workers(stack.router_process.pid)
    os.kill(killed, signal.SIGKILL)
    wait_until(
        lambda: (
            len(_workers(stack.router_process.pid)) == 1
            and killed not in _workers(stack.router_process.pid)
        ),
        "the killed worker started again",
    )
    for _ in range(5):
        answers += _send(stack.router, 100)
        scrapes.append(_scraped(stack.router))
    for before, after in itertools.pairwise(scrapes):
        went_back = {key: (before[key], value) for key, value in after.items()
                     if value < before.get(key, 0)}  # fmt: skip
        assert not went_back, went_back
    sent = _totals(answers)
    assert sum(sent.values()) == 1500 and min(sent.values()) > 500, sent
    assert _sum_by_variant(scrapes[-1]) == sent
    total = 'sum by (variant) (mlcanary_requests_total{job="router"})'
    wait_until(lambda: _query(stack.prometheus, total) == sent, "Prometheus scraped every count")
    resets = 'sum by (variant) (resets(mlcanary_requests_total{job="router"}[10m]))'
    assert set(_query(stack.prometheus, resets).values()) == {0.0}
    window = asyncio.run(_window(stack.prometheus))
    verdict = judge(window, GateLimits(), RolloutEvidence())
    assert verdict.outcome == "fail", verdict
    failed = {gate.gate for gate in verdict.gates if not gate.passed}
    assert "error_rate" in failed, verdict.gates


def _sum_by_variant(scrape: Scrape) -> dict[str, float]:
    totals: dict[str, float] = {}
    for (name, labels), value in scrape.items():
        if name == "mlcanary_requests_total":
            variant = dict(labels)["variant"]
            totals[variant] = totals.get(variant, 0) + value
    return totals


async def _window(prometheus: str) -> Window:
    async with aiohttp.ClientSession() as session:
        return await window_from_prometheus(session, prometheus, 600)


def test_prometheus_s_rate_over_two_workers_is_what_the_client_got(stack: Stack) -> None:
    """4 clients send without pause; between two of Prometheus' scrapes at least 1,000 answers
    apart per variant, each variant's increase in its samples equals the answers the client
    received between the two scrape times, within 1%."""
    answered: list[tuple[float, str]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            variant, _status = _one(stack.router)
            answered.append((time.time(), variant))

    clients = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    for thread in clients:
        thread.start()
    try:
        wait_until(lambda: _span(stack.prometheus, answered) is not None,
                   "two scrapes 1,000 answers apart per variant", 120)  # fmt: skip
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=60)
    span = _span(stack.prometheus, answered)
    assert span is not None
    for variant, (scraped, received) in span.items():
        # An answer counted by the router just before a scrape may reach the client just
        # after it: at most one in flight per client at each end.
        assert abs(scraped - received) <= 0.01 * received, (variant, scraped, received)


def _span(
    prometheus: str, answered: list[tuple[float, str]]
) -> dict[str, tuple[float, float]] | None:
    """Per variant, the increase between the first and last scrape taken while the clients
    sent, and the answers they received in between; None until both are 1,000 or more."""
    if not answered:
        return None
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode(
        {"query": 'mlcanary_requests_total{job="router"}[2m]'}
    )
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            series = json.loads(answer.read())["data"]["result"]
    except OSError:
        return None
    totals: dict[float, dict[str, float]] = {}
    for one in series:
        for stamp, value in one["values"]:
            by_variant = totals.setdefault(float(stamp), {})
            variant = one["metric"]["variant"]
            by_variant[variant] = by_variant.get(variant, 0.0) + float(value)
    stamps = sorted(stamp for stamp in totals if stamp > answered[0][0])
    if len(stamps) < 2:
        return None
    first, last = stamps[0], stamps[-1]
    span = {}
    for variant in ("stable", "canary"):
        scraped = totals[last].get(variant, 0.0) - totals[first].get(variant, 0.0)
        received = sum(1 for at, name in list(answered) if first < at <= last and name == variant)
        if received < 1000:
            return None
        span[variant] = (scraped, float(received))
    return span
