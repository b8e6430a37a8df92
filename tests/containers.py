"""Podman for the compose test: base-image stand-ins, the images, the Docker API, health checks.

Where image registries cannot be reached, the compose stack still runs on Debian's podman:
- the Dockerfile's base image is stood in for by a Debian root file system (`debootstrap`,
  from the archive apt uses) with Python and pip, imported under the base image's name once
  and kept; Prometheus's by Debian's package on that base (`deploy/podman/prometheus.Dockerfile`);
- every image is built with `--format docker` (podman's own format drops `HEALTHCHECK`), with
  this machine's CA bundle mounted where pip looks, to reach PyPI;
- podman serves the Docker API on a socket of the test's for `docker-compose`;
- podman runs health checks only from systemd timers: `HealthChecks` runs them instead.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
KUSTOMIZE_BASE = ROOT / "deploy" / "kubernetes" / "base"
PROMETHEUS_STAND_IN = ROOT / "deploy" / "podman" / "prometheus.Dockerfile"
TOOLS = ("podman", "runc", "docker-compose", "debootstrap")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = "python3,python3-pip,python3-venv,python-is-python3,ca-certificates"
HEALTH_CHECK_SECONDS = 2.0


def unusable() -> str | None:
    """Why the compose test cannot run here, or None."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (`make system-deps` installs them)"
    if os.geteuid() != 0:
        return "the compose test runs podman as root (rootful networking), and this is not root"
    with tempfile.TemporaryDirectory() as folder:
        done = Podman(containers_conf(Path(folder))).run("info", check=False)
    if done.returncode != 0:
        return f"podman cannot run here: {done.stderr.strip()[-300:]}"
    return None


def containers_conf(folder: Path) -> Path:
    """A podman configuration for this machine: no systemd, and limits within the hard ones.

    podman's default limits are above what this machine grants (runc then fails with `error
    setting rlimits`): containers get this process's hard limits, and no more processes than
    the kernel has process ids (a larger limit is refused here, seen at 32,769 with ids up
    to 32,768).
    """
    files = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    processes = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], pid_max)
    limits = [f"nofile={files}:{files}", f"nproc={processes}:{processes}"]
    path = folder / "containers.conf"
    path.write_text(
        "[containers]\n"
        f"default_ulimits = {json.dumps(limits)}\n"
        "[engine]\n"
        'cgroup_manager = "cgroupfs"\n'
        'runtime = "runc"\n'
        'events_logger = "file"\n'
    )
    return path


def docker_reference(name: str) -> str:
    """Name an image as the Docker API does: `python:3` is `docker.io/library/python:3`."""
    first = name.split("/", 1)[0]
    if "/" in name and ("." in first or ":" in first or first == "localhost"):
        return name
    return f"docker.io/{name}" if "/" in name else f"docker.io/library/{name}"


@dataclass(frozen=True)
class Podman:
    """podman with the test's configuration."""

    config: Path

    def environment(self) -> dict[str, str]:
        """The environment podman (and its API service) run with."""
        return {**os.environ, "CONTAINERS_CONF": str(self.config)}

    def run(
        self, *args: str, check: bool = True, timeout: float = 1800
    ) -> subprocess.CompletedProcess[str]:
        """Run `podman ARGS`; raise with its output if it fails and `check`."""
        done = subprocess.run(
            ["podman", *args], env=self.environment(), capture_output=True, text=True,
            timeout=timeout, check=False,
        )  # fmt: skip
        if check and done.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed: {done.stderr[-3000:]}")
        return done

    def image_exists(self, reference: str) -> bool:
        """Whether the image is in local storage."""
        return self.run("image", "exists", reference, check=False).returncode == 0


def base_image() -> str:
    """The image the Dockerfile builds on (its first stage's `FROM`)."""
    found = re.search(r"^FROM (\S+) AS base$", DOCKERFILE.read_text(), re.MULTILINE)
    if found is None:
        raise AssertionError(f"{DOCKERFILE} has no `FROM ... AS base`")
    return docker_reference(found.group(1))


def build_base_stand_in(podman: Podman) -> str:
    """Stand a Debian bookworm root file system in for the base image, once; return its name.

    Debian's Python is 3.11 as the base's; it is "externally managed", which a container's
    only Python need not be (PIP_BREAK_SYSTEM_PACKAGES).
    """
    name = base_image()
    if podman.image_exists(name):
        return name
    with tempfile.TemporaryDirectory(prefix="mlcanary-rootfs-") as folder:
        root = Path(folder) / "root"
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm",
             str(root), DEBIAN_MIRROR],
            check=True, capture_output=True, timeout=1200,
        )  # fmt: skip
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (root / cache).glob("*"):
                if entry.is_file():
                    entry.unlink()
        archive = Path(folder) / "root.tar"
        subprocess.run(["tar", "-C", str(root), "-cf", str(archive), "."], check=True)
        podman.run(
            "import", "--change", "ENV PIP_BREAK_SYSTEM_PACKAGES=1", "--change", "ENV LANG=C.UTF-8",
            "--change", 'CMD ["python3"]', str(archive), name,
        )  # fmt: skip
    return name


def compose_images() -> dict[str, str | None]:
    """Each image the compose file names, with the Dockerfile target that builds it (or None)."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    return {
        str(service["image"]): (service.get("build") or {}).get("target")
        for service in services.values()
    }


def kustomize_images() -> set[str]:
    """Each image the Kubernetes base names."""
    names = set()
    for manifest in KUSTOMIZE_BASE.glob("*.yaml"):
        names.update(re.findall(r"^\s+image:\s*(\S+)\s*$", manifest.read_text(), re.MULTILINE))
    return names


def build_images(podman: Podman, log: Path) -> list[str]:
    """Build every image compose and the Kubernetes base name that a Dockerfile here builds.

    Each Dockerfile target is built once and tagged with every name it is known by (a
    Kubernetes image shares a compose image's name). Prometheus's is the Debian stand-in.
    Returns the names built; Grafana's has no stand-in.
    """
    certificates = ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt"
    mount = f"{certificates}:/etc/ssl/certs/ca-certificates.crt:ro"
    built = []
    with log.open("a") as output:
        for image, target in compose_images().items():
            if target is not None:
                arguments = ["-f", str(DOCKERFILE), "--target", target, str(ROOT)]
            elif image.startswith("prom/prometheus:"):
                arguments = ["-f", str(PROMETHEUS_STAND_IN), "--build-arg",
                             f"BASE={base_image()}", str(PROMETHEUS_STAND_IN.parent)]  # fmt: skip
            else:
                continue
            done = subprocess.run(
                ["podman", "build", "--format", "docker", "-v", mount,
                 "-t", docker_reference(image), *arguments],
                env=podman.environment(), stdout=output, stderr=subprocess.STDOUT,
                check=False, timeout=1800,
            )  # fmt: skip
            if done.returncode != 0:
                raise AssertionError(f"building {image} failed: see {log}")
            built.append(image)
    return built


@contextmanager
def docker_api(podman: Podman, folder: Path) -> Iterator[str]:
    """Serve the Docker API from podman on a socket in `folder`; yield its DOCKER_HOST."""
    socket = folder / "podman.sock"
    host = f"unix://{socket}"
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", host],
        env=podman.environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not socket.exists():
            if service.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("podman's Docker API service did not start")
            time.sleep(0.05)
        yield host
    finally:
        service.terminate()
        try:
            service.wait(timeout=30)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()


class HealthChecks:
    """Run the health checks of a compose project's containers, as Docker's engine would.

    Containers not yet healthy are checked every `HEALTH_CHECK_SECONDS`; healthy ones too,
    so one that stops answering turns unhealthy.
    """

    def __init__(self, podman: Podman, project: str) -> None:
        self._podman = podman
        self._project = project
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-checks", daemon=True)

    def __enter__(self) -> HealthChecks:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        label = f"label=com.docker.compose.project={self._project}"
        while not self._stop.wait(HEALTH_CHECK_SECONDS):
            listed = self._podman.run("ps", "-q", "--filter", label, check=False)
            for container in listed.stdout.split():
                # Exit 125 means the container has no health check: nothing to do.
                self._podman.run("healthcheck", "run", container, check=False, timeout=60)
