"""The compose, Prometheus and Grafana files, checked as far as this machine allows (no engine)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import yaml

from contracts.routing import RoutingConfig, write_routing_file
from controller.rollout.judgement import Buckets, Window
from controller.rollout.promql import latency_history, window_from_prometheus
from tests.conftest import TrainedRegistry
from tests.helpers import command_environment, free_port, wait_for_url, wait_until
from tests.servers import ServerProcess, start_model_server

pytestmark = pytest.mark.slow  # real MLflow, model servers or whole systems

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
PROMETHEUS = ROOT / "config" / "prometheus"
DASHBOARD = ROOT / "config" / "grafana" / "dashboards" / "mlcanary.json"
METRIC = re.compile(r"\b(mlcanary_[a-z_]+)")
ROW = json.dumps(
    {"dataframe_records": [{"hours_studied": 6.5, "sleep_hours": 7.0,
                            "attendance_percent": 90.0, "previous_scores": 85.0}]}
).encode()  # fmt: skip


def compose(*overrides: Path, **environment: str) -> dict[str, object]:
    """The compose file (with `overrides`) as docker-compose resolves it in `environment`."""
    files = [argument for path in (COMPOSE, *overrides) for argument in ("-f", str(path))]
    done = subprocess.run(
        ["docker-compose", *files, "config"], capture_output=True, text=True, check=False,
        cwd=ROOT,
        env={**_without_compose_variables(), "GRAFANA_ADMIN_PASSWORD": "p", **environment},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    resolved: dict[str, object] = yaml.safe_load(done.stdout)
    return resolved


def _without_compose_variables() -> dict[str, str]:
    """This process's environment without the variables the compose file reads."""
    return {
        name: value for name, value in os.environ.items()
        if not name.startswith(("MLCANARY_", "GRAFANA_"))
    }  # fmt: skip


def test_compose_publishes_only_the_router_and_the_page_beyond_loopback() -> None:
    """MLflow unpublished (registry writes are code execution), Prometheus and Grafana on
    loopback, Grafana's admin password the operator's; the MLflow UI only by opting in, on
    loopback."""

    def published(resolved: dict[str, object]) -> dict[str, set[str]]:
        services = resolved["services"]
        assert isinstance(services, dict)
        return {
            name: {_address(port) for port in service.get("ports", [])}
            for name, service in services.items() if service.get("ports")
        }  # fmt: skip

    assert published(compose()) == {
        "router": {"0.0.0.0:8000"}, "controller": {"0.0.0.0:8001"},
        "prometheus": {"127.0.0.1:9090"}, "grafana": {"127.0.0.1:3000"},
    }  # fmt: skip
    everywhere = "0.0.0.0"  # noqa: S104 (the operator's opt-in, checked)
    shared = published(compose(MLCANARY_ADDRESS="10.0.0.5", MLCANARY_PRIVATE_ADDRESS=everywhere))
    assert shared["router"] == {"10.0.0.5:8000"} and shared["grafana"] == {"0.0.0.0:3000"}
    assert published(compose(ROOT / "deploy/docker/mlflow-ui.yml"))["mlflow"] == {
        "127.0.0.1:5000"
    }  # fmt: skip
    grafana = compose()["services"]["grafana"]["environment"]  # type: ignore[index]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == "p"  # noqa: S105 (the test's, above)
    assert grafana["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    for name, service in compose()["services"].items():  # type: ignore[attr-defined]
        if "build" in service:  # ours: as hardened as on Kubernetes
            assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name
            assert service["security_opt"] == ["no-new-privileges:true"], name
    unset = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config"], capture_output=True, text=True,
        check=False, cwd=ROOT, env=_without_compose_variables(),
    )  # fmt: skip
    assert unset.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in unset.stderr


def _address(port: str | dict[str, object]) -> str:
    """The host address and port of a resolved `ports` entry."""
    if isinstance(port, dict):
        return f"{port.get('host_ip', '0.0.0.0')}:{port['published']}"  # noqa: S104
    return ":".join(port.split(":")[:-1])


def test_docker_compose_accepts_the_file_and_everything_it_names_exists() -> None:
    resolved = compose()
    services = resolved["services"]
    assert isinstance(services, dict)
    assert set(services) == {
        "mlflow", "trainer", "model-stable", "model-canary", "controller", "router",
        "prometheus", "grafana",
    }  # fmt: skip
    binds = 0
    targets = set(re.findall(r"^FROM \S+ AS (\S+)$", DOCKERFILE.read_text(), re.MULTILINE))
    for name, service in services.items():
        build = service.get("build")
        if build:
            assert Path(build["context"]).is_dir(), name
            assert (Path(build["context"]) / build["dockerfile"]).is_file(), name
            assert build["target"] in targets, (name, build["target"])
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith("/"):  # a bind mount of a project file, not a named volume
                assert Path(source).exists(), (name, source)
                binds += 1
    assert services["model-stable"]["command"] == ["models:/StudentExamPredictor@champion"]
    assert services["model-canary"]["command"] == ["models:/StudentExamPredictor@challenger"]
    assert binds == 4  # prometheus' config and rules, grafana's provisioning and dashboards


def test_the_router_image_installs_no_mlflow_and_every_image_runs_as_a_user() -> None:
    text = DOCKERFILE.read_text()
    router_stage = text.split("FROM base AS router", 1)[1].split("FROM ", 1)[0]
    assert "pip install --no-compile ." in router_stage and "[ml]" not in router_stage
    assert re.search(r"^FROM python:3\.11\.\d+-slim-bookworm AS base$", text, re.MULTILINE)
    assert text.count("USER mlcanary") == 2  # the router stage and the ml stage the rest build on
    assert text.count("HEALTHCHECK") == 4  # router, model server, controller, MLflow
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests", ".mlcanary"} <= set(ignored)


def test_promtool_accepts_the_prometheus_config_and_the_alert_rules() -> None:
    for command in (
        ["promtool", "check", "config", str(PROMETHEUS / "prometheus.yml")],
        ["promtool", "check", "rules", str(PROMETHEUS / "alerts.yml")],
    ):
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"][0]["rules"]
    assert {rule["alert"] for rule in rules} == {
        "CanaryErrorRateHigh", "CanaryLatencyHigh", "RoutingConfigReloadFailed",
    }  # fmt: skip


def dashboard_metrics() -> set[str]:
    """Every metric name the dashboard's queries use (histogram suffixes stripped)."""
    dashboard = json.loads(DASHBOARD.read_text())
    names = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in METRIC.findall(target["expr"])
    }
    return {re.sub(r"_(bucket|sum|count)$", "", name) for name in names}


@dataclass
class Live:
    """Two model servers and a router in front of them, as child processes."""

    stable: ServerProcess
    canary: ServerProcess
    router_url: str
    routing: Path
    """The routing file the router follows (tests move the weight to choose a variant)."""

    def split(self, canary_weight: float) -> RoutingConfig:
        """The split of the two model servers at `canary_weight`."""
        return RoutingConfig.model_validate({
            "model": "StudentExamPredictor",
            "stable": {"url": self.stable.url, "version": "1"},
            "canary": {"url": self.canary.url, "version": "2", "weight": canary_weight},
            "predictions": {"version": "1", "outputs": {"predictions": {"edges": [40, 60, 80]}}},
        })  # fmt: skip


@pytest.fixture(scope="module")
def live(
    trained_registry: TrainedRegistry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    folder = tmp_path_factory.mktemp("live")
    tracking = trained_registry.settings.tracking_uri
    stable = start_model_server(trained_registry.champion.model_uri, tracking, folder / "v1.log")
    canary = start_model_server(trained_registry.challenger.model_uri, tracking, folder / "v2.log")
    port = free_port()
    routing = folder / "routing.yaml"
    write_routing_file(routing, Live(stable, canary, "", routing).split(10))
    router = subprocess.Popen(
        [sys.executable, "-m", "mlcanary", "router", "--config", str(routing), "--port", str(port)],
        env=command_environment(folder), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        stable.wait_healthy()
        canary.wait_healthy()
        url = f"http://127.0.0.1:{port}"
        wait_for_url(f"{url}/health")
        # The router may have checked the canary before it was up: wait until it takes traffic.
        wait_until(lambda: _canary_healthy(url), "the router sees the canary healthy")
        yield Live(stable, canary, url, routing)
    finally:
        router.terminate()
        router.wait(timeout=30)
        stable.stop()
        canary.stop()


def _canary_healthy(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/health", timeout=10) as answer:
        return bool(json.loads(answer.read())["upstreams"]["canary"]["healthy"])


def _names(url: str) -> set[str]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found = set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))
    return {re.sub(r"_total$", "", name) for name in found} | found


def test_every_metric_the_dashboard_queries_is_exported(live: Live) -> None:
    exported = _names(live.router_url) | _names(live.stable.url)
    wanted = dashboard_metrics()
    assert wanted, "the dashboard queries no metric"
    assert wanted <= exported, sorted(wanted - exported)
    alerts = set(METRIC.findall((PROMETHEUS / "alerts.yml").read_text()))
    assert {re.sub(r"_(bucket|sum|count)$", "", name) for name in alerts} <= exported


def _post(live: Live, variant: str, count: int) -> None:
    """Send `count` requests of live traffic that the split gives to `variant`: at weight 100
    or 0 (a forced request would be an operator's, counted apart)."""
    version = write_routing_file(live.routing, live.split(100 if variant == "canary" else 0))

    def loaded() -> bool:
        with urllib.request.urlopen(f"{live.router_url}/health", timeout=10) as answer:
            return bool(json.loads(answer.read())["config_version"] == version)

    wait_until(loaded, f"the router follows the split for {variant}")
    for _ in range(count):
        request = urllib.request.Request(
            f"{live.router_url}/invocations", data=ROW, method="POST",
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
            assert answer.headers["X-Model-Variant"] == variant


def _query(prometheus: str, expression: str) -> dict[str, float]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    with urllib.request.urlopen(url, timeout=5) as answer:
        result = json.loads(answer.read())["data"]["result"]
    return {item["metric"].get("variant", ""): float(item["value"][1]) for item in result}


def test_a_real_prometheus_scrapes_the_counts_that_were_sent(live: Live, tmp_path: Path) -> None:
    """Debian's Prometheus, on a free port, scrapes the router and both model servers."""
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus is installed by `make system-deps`"
    urls = {"router": live.router_url, "stable": live.stable.url, "canary": live.canary.url}
    hosts = {name: urllib.parse.urlparse(url).netloc for name, url in urls.items()}
    config = {
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [
            {"job_name": "router", "static_configs": [{"targets": [hosts["router"]]}]},
            {"job_name": "model-servers", "static_configs": [
                {"targets": [hosts["stable"]], "labels": {"variant": "stable"}},
                {"targets": [hosts["canary"]], "labels": {"variant": "canary"}},
            ]},
        ],
    }  # fmt: skip
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    before = _query_router_counts(live.router_url)
    _post(live, "stable", 7)
    _post(live, "canary", 3)
    port = free_port()
    server = subprocess.Popen(
        [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        expected = {"stable": before["stable"] + 7, "canary": before["canary"] + 3}
        seen: dict[str, float] = {}
        served: dict[str, float] = {}
        while seen != expected or served.get("stable", 0) < 7 or served.get("canary", 0) < 3:
            assert time.monotonic() < deadline, (seen, expected, served)
            time.sleep(0.5)
            try:
                seen = _query(url, 'sum by (variant) (mlcanary_requests_total{job="router"})')
                served = _query(url, "sum by (variant) (mlcanary_model_requests_total)")
            except OSError:
                continue
        # A rollout reads its windows from this Prometheus the same way: `increase` over
        # the window, which Prometheus extrapolates a little to the window's edges: scraped
        # all through the window (a sample each second), the extrapolation stays small.
        covered = 'count_over_time(mlcanary_requests_total{job="router",code="200"}[8s])'
        wait_until(lambda: min(_query(url, covered).values(), default=0) >= 7,
                   "the router scraped all through a window")  # fmt: skip
        _post(live, "stable", 20)
        _post(live, "canary", 10)
        after = {"stable": expected["stable"] + 20, "canary": expected["canary"] + 10}
        counts = 'sum by (variant) (mlcanary_requests_total{job="router"})'
        wait_until(lambda: _query(url, counts) == after, "the new requests scraped")
        window = asyncio.run(_prometheus_window(url, 8))
        assert 18 <= window.stable.requests <= 28, window.stable  # 20 sent, extrapolated
        assert 9 <= window.canary.requests <= 14, window.canary  # 10 sent
        assert window.canary.errors == 0 and window.canary.latency[-1][1] > 0
        assert window.canary.predictions and window.stable.predictions
        # What a rollout starts its latency bound from: stable's version over the last hour.
        history = asyncio.run(_stable_latency(url))
        # The 20 sent while scraped (the 7 before came ahead of the first scrape: no increase).
        assert history and 18 <= history[-1][1] <= 28, history
    finally:
        server.terminate()
        server.wait(timeout=30)


async def _prometheus_window(url: str, seconds: float) -> Window:
    async with aiohttp.ClientSession() as session:
        return await window_from_prometheus(session, url, seconds)


async def _stable_latency(url: str) -> Buckets:
    async with aiohttp.ClientSession() as session:
        return await latency_history(session, url, "stable", "1")


def _query_router_counts(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    counts = {"stable": 0.0, "canary": 0.0}
    for variant, value in re.findall(
        r'^mlcanary_requests_total\{[^}]*variant="(\w+)"[^}]*\} (\S+)$', text, re.MULTILINE
    ):
        counts[variant] += float(value)
    return counts
