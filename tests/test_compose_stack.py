"""The compose stack for real: images built here, started by docker-compose on podman.

`make compose-test` runs this file alone; `make test` runs it with the rest when podman is
usable (else it is skipped, saying why). The stack's ports are published on 127.0.0.1 at
free ports, under a project name of the test's own; `docker-compose down -v` must leave no
container, volume or network of it. The images and the harness are in `tests/containers.py`.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.containers import (
    COMPOSE,
    ROOT,
    HealthChecks,
    Podman,
    build_base_stand_in,
    build_images,
    compose_images,
    containers_conf,
    docker_api,
    docker_reference,
    kustomize_images,
    unusable,
)
from tests.helpers import free_port, wait_until

REASON = unusable()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(REASON is not None, reason=f"compose test skipped: {REASON}"),
    # The first test's fixture builds the images and starts the stack (minutes).
    pytest.mark.timeout(1800),
]

PORTS = ("ROUTER", "CONTROLLER", "PROMETHEUS", "GRAFANA")
"""The published services (MLflow is not: it stays on the compose network)."""
GRAFANA = "grafana"
UP_SECONDS = 900
WAIT_SECONDS = 180
"""For a condition over the stack (a scrape, a routing file read, a promote) to hold."""
ROW = {"hours_studied": 6.5, "sleep_hours": 7.0, "attendance_percent": 90.0, "previous_scores": 85}


@dataclass
class Stack:
    """A running compose project and how to reach it."""

    podman: Podman
    environment: dict[str, str]
    project: str
    ports: dict[str, int]
    token: str
    built: list[str]
    services: list[str]

    def url(self, service: str) -> str:
        """The published address of ROUTER, CONTROLLER or PROMETHEUS."""
        return f"http://127.0.0.1:{self.ports[service]}"

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run docker-compose on this project; raise with its output if it fails."""
        done = subprocess.run(
            ["docker-compose", "-p", self.project, "-f", str(COMPOSE), *args],
            env=self.environment, capture_output=True, text=True, timeout=timeout,
            check=False, cwd=ROOT,
        )  # fmt: skip
        if done.returncode != 0:
            raise AssertionError(
                f"docker-compose {' '.join(args)}: {done.stderr[-3000:]}\n{self.unwell()}"
            )
        return done

    def unwell(self) -> str:
        """The last lines of every container of the project that is not running and healthy,
        with its state: what a failed `up` needs to be understood from CI's output alone."""
        label = f"label=com.docker.compose.project={self.project}"
        listed = self.podman.run(
            "ps", "-a", "--filter", label, "--format", "{{.ID}} {{.Names}} {{.Status}}",
            check=False,
        )  # fmt: skip
        reports = []
        for line in listed.stdout.splitlines():
            container, name, status = [*line.split(" ", 2), "", ""][:3]
            if status.startswith("Up") and "unhealthy" not in status and "starting" not in status:
                continue
            logs = self.podman.run("logs", "--tail", "40", container, check=False)
            health = self.podman.run(
                "inspect", "--format", "{{json .State.Health}}", container, check=False
            )
            reports.append(
                f"--- {name} ({status})\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}"
                f"health: {health.stdout.strip()[-1500:]}"
            )
        return "\n".join(reports)

    def inside(self, service: str, url: str, host: str = "") -> tuple[int, Any]:
        """GET `url` from inside `service`'s container (its own network), with `host` as Host
        if given; return the status and the JSON (or text) answered."""
        script = (
            "import sys, urllib.error, urllib.request\n"
            "headers = {'Host': sys.argv[2]} if sys.argv[2] else {}\n"
            "request = urllib.request.Request(sys.argv[1], headers=headers)\n"
            "try:\n"
            "    answer = urllib.request.urlopen(request, timeout=10)\n"
            "except urllib.error.HTTPError as error:\n"
            "    answer = error\n"
            "print(answer.status)\n"
            "print(answer.read().decode())\n"
        )
        done = self.compose("exec", "-T", service, "python", "-c", script, url, host)
        status, _, text = done.stdout.partition("\n")
        try:
            return int(status), json.loads(text)
        except ValueError:
            return int(status), text

    def leftovers(self) -> list[str]:
        """Containers, volumes and networks of this project that podman still has."""
        label = f"label=com.docker.compose.project={self.project}"
        found = []
        for kind in (("ps", "-a"), ("volume", "ls"), ("network", "ls")):
            listed = self.podman.run(*kind, "-q", "--filter", label)
            found += [f"{kind[0]} {name}" for name in listed.stdout.split()]
        return found


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("compose")
    podman = Podman(containers_conf(folder))
    build_base_stand_in(podman)
    built = build_images(podman, folder / "build.log")
    services = list(_services())
    if not podman.image_exists(docker_reference(_grafana_image())):
        services.remove(GRAFANA)  # its registry cannot be reached: test_grafana says so
    with docker_api(podman, folder) as docker_host:
        project = f"mlcanary-test-{secrets.token_hex(4)}"
        ports = {name: free_port() for name in PORTS}
        token = secrets.token_urlsafe(24)
        environment = {
            **podman.environment(),
            "DOCKER_HOST": docker_host,
            "MLCANARY_ADDRESS": "127.0.0.1",
            "MLCANARY_ADMIN_TOKEN": token,
            "GRAFANA_ADMIN_PASSWORD": secrets.token_urlsafe(12),
            **{f"MLCANARY_{name}_PORT": str(port) for name, port in ports.items()},
        }
        stack = Stack(podman, environment, project, ports, token, built, services)
        with HealthChecks(podman, project):
            try:
                stack.compose("up", "-d", "--no-build", *services, timeout=UP_SECONDS)
                wait_until(_router_healthy(stack), "router healthy", WAIT_SECONDS)
                yield stack
            finally:
                subprocess.run(
                    ["docker-compose", "-p", project, "-f", str(COMPOSE), "down", "-v",
                     "--remove-orphans"],
                    env=environment, capture_output=True, timeout=300, check=False, cwd=ROOT,
                )  # fmt: skip


def _router_healthy(stack: Stack) -> Callable[[], bool]:
    return lambda: _get(stack.url("ROUTER") + "/health")[0] == 200


def _services() -> Iterator[str]:
    import yaml

    yield from yaml.safe_load(COMPOSE.read_text())["services"]


def _grafana_image() -> str:
    return next(image for image in compose_images() if image.startswith("grafana/"))


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    return _call("GET", url, None, headers)


def _call(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, _decoded(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, _decoded(error.read())
    except OSError as error:
        return 0, repr(error)


def _decoded(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return body.decode(errors="replace")


def test_every_image_compose_and_kubernetes_name_was_built_here(stack: Stack) -> None:
    for image in kustomize_images():
        assert stack.podman.image_exists(docker_reference(image)), image
    assert set(stack.built) == {image for image in compose_images() if "grafana" not in image}


def test_mlflow_accepts_its_service_name_as_host_and_refuses_strangers(stack: Stack) -> None:
    """MLflow is reached on the compose network only, by its service name."""
    search = "http://mlflow:5000/api/2.0/mlflow/registered-models/search"
    status, body = stack.inside("router", search)
    assert status == 200, body
    assert [model["name"] for model in body["registered_models"]] == ["StudentExamPredictor"]
    assert stack.inside("router", search, "attacker.example")[0] == 403
    status, body = stack.inside("router", "http://controller:8001/api/overview", "evil.example")
    assert status == 400 and "--allowed-host" in body["message"]
    assert stack.inside("router", "http://controller:8001/api/overview")[0] == 200


def test_predict_and_invocations_through_the_router_reach_both_variants(stack: Stack) -> None:
    router = stack.url("ROUTER")
    used: set[str] = set()
    versions: set[str] = set()

    def both_seen() -> bool:
        status, body = _call("POST", router + "/predict", {"features": ROW})
        assert status == 200, body
        used.add(body["model_used"])
        request = urllib.request.Request(
            router + "/invocations",
            data=json.dumps({"dataframe_records": [ROW]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert len(json.loads(answer.read())["predictions"]) == 1
            versions.add(answer.headers["X-Model-Version"])
        return used == {"current", "next"} and versions == {"1", "2"}

    wait_until(both_seen, "both variants answering", WAIT_SECONDS)


def test_the_model_servers_report_their_versions_inside_the_network(stack: Stack) -> None:
    for service, version in (("model-stable", "1"), ("model-canary", "2")):
        status, metadata = stack.inside(service, "http://127.0.0.1:8080/metadata")
        assert status == 200, metadata
        assert metadata["version"] == version
        assert metadata["name"] == "StudentExamPredictor"
        assert metadata["path"].startswith("fast path")


def test_prometheus_scrapes_the_router_and_no_client_forces_the_canary(stack: Stack) -> None:
    """Forcing is off unless the operator turns it on: a client's X-Force-Variant is refused
    (routed by the split, counted), and Prometheus sees both counts."""
    router = stack.url("ROUTER")
    for _ in range(20):
        forced = {"X-Force-Variant": "canary"}
        status, _body = _call("POST", router + "/predict", {"features": ROW}, forced)
        assert status == 200

    def counted(query: str) -> Callable[[], bool]:
        address = stack.url("PROMETHEUS") + "/api/v1/query?query=" + urllib.request.quote(query)

        def enough() -> bool:
            status, body = _get(address)
            result = body["data"]["result"] if status == 200 else []
            return bool(result) and float(result[0]["value"][1]) >= 20

        return enough

    wait_until(counted("sum(mlcanary_requests_total)"), "the requests counted", WAIT_SECONDS)
    refused = 'sum(mlcanary_force_refused_total{reason="disabled"})'
    wait_until(counted(refused), "the refused forces counted", WAIT_SECONDS)
    status, body = _get(stack.url("PROMETHEUS") + "/api/v1/targets")
    health = {target["labels"]["job"]: target["health"] for target in body["data"]["activeTargets"]}
    assert health["router"] == "up", body


def test_labels_sent_to_the_router_are_joined_by_the_controller(stack: Stack) -> None:
    """The router's prediction log is on a volume the controller reads: a label for an
    answered request is taken (200), and shows in the controller's quality."""
    router = stack.url("ROUTER")
    request = urllib.request.Request(
        router + "/invocations", data=json.dumps({"dataframe_records": [ROW]}).encode(),
        headers={"Content-Type": "application/json", "X-Request-Id": "compose-label-1"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.headers["X-Client-Request-Id"] == "compose-label-1"
        issued = answer.headers["X-Request-Id"]  # the router's: what labels join on
    bearer = {"Authorization": f"Bearer {stack.token}"}
    label = {"request_id": issued, "label": 70.0}
    answers: list[tuple[int, Any]] = []

    def taken() -> bool:  # the log is written every half second: 404 until then
        answers.append(_call("POST", router + "/feedback", label, bearer))
        assert answers[-1][0] in (200, 404), answers[-1]
        return answers[-1][0] == 200

    wait_until(taken, "the label taken", WAIT_SECONDS)
    status, body = _get(stack.url("CONTROLLER") + "/api/status", bearer)
    assert (
        status == 200
        and sum(
            figures["labels"]
            for versions in body["quality"].values()
            for figures in versions.values()
        )
        == 1
    ), body


def test_the_controller_image_serves_the_operator_page(stack: Stack) -> None:
    """The page and its vendored assets are in the installed package (not only a checkout)."""
    controller = stack.url("CONTROLLER")
    for path, marker in (("/", b"<title>mlcanary</title>"),
                         ("/page/chart.umd.min.js", b"Chart.js v4")):  # fmt: skip
        with urllib.request.urlopen(controller + path, timeout=30) as answer:
            assert marker in answer.read(), path
    status, body = _get(controller + "/api/overview")
    assert status == 200 and body["stable"]["version"], body


def test_the_original_admin_paths_change_weight_and_promote_with_the_token(
    stack: Stack,
) -> None:
    router = stack.url("ROUTER")
    bearer = {"Authorization": f"Bearer {stack.token}"}
    refused = _call("POST", router + "/canary-probability", {"probability": 0.3})
    assert refused[0] == 401, refused
    wrong = {"Authorization": "Bearer wrong"}
    assert _call("POST", router + "/canary-probability", {"probability": 0.3}, wrong)[0] == 403
    status, body = _call("POST", router + "/canary-probability", {"probability": 0.3}, bearer)
    assert status == 200, body
    wait_until(
        lambda: _get(router + "/canary-status")[1]["canary_probability"] == 0.3,
        "the router following the new weight",
        WAIT_SECONDS,
    )
    status, body = _call("POST", router + "/accept-next-model", None, bearer)
    assert status == 200, body
    wait_until(
        lambda: _get(router + "/canary-status")[1]["current_model"]["version"] == "2",
        "the router serving version 2 as stable",
        WAIT_SECONDS,
    )


def test_grafana(stack: Stack) -> None:
    if GRAFANA not in stack.services:
        pytest.skip(
            f"{_grafana_image()} cannot be fetched here (no image registry is reachable) and "
            "has no stand-in: Grafana is not started; its dashboard's queries are checked "
            "against live metrics in tests/test_deploy_files.py"
        )
    assert _get(f"http://127.0.0.1:{stack.ports['GRAFANA']}/api/health")[0] == 200


def test_down_leaves_nothing_behind(stack: Stack) -> None:
    stack.compose("down", "-v", "--remove-orphans")
    assert stack.leftovers() == []


def test_the_harness_names_images_as_the_docker_api_does() -> None:
    assert docker_reference("python:3.11") == "docker.io/library/python:3.11"
    assert docker_reference("mlcanary/router:dev") == "docker.io/mlcanary/router:dev"
    assert docker_reference("quay.io/a/b:1") == "quay.io/a/b:1"
    assert docker_reference("localhost/a:1") == "localhost/a:1"
