"""Child processes of a local system: start with a log file, wait until healthy, stop cleanly."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from controller.errors import ControllerError

STOP_GRACE_SECONDS = 10.0


def child_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Return this process's environment with its Python's `bin` first on PATH.

    `mlflow server` and `mlflow models serve` exec bare `uvicorn`/`gunicorn`, which must be
    the ones installed beside this interpreter, however `mlcanary` itself was started.
    """
    environment = dict(os.environ)
    scripts = str(Path(sys.executable).parent)
    environment["PATH"] = os.pathsep.join([scripts, environment.get("PATH", "")])
    environment.update(extra or {})
    return environment


def ensure_port_free(host: str, port: int, what: str) -> None:
    """Raise ControllerError naming `what` if `host:port` cannot be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As servers do: a listener still refuses the bind, a closed socket in TIME_WAIT does not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ControllerError(
                f"{what} cannot listen on {host}:{port}: {error.strerror or error}"
            ) from None


@dataclass
class ChildProcess:
    """One child process in its own process group, its output appended to a log file."""

    name: str
    argv: list[str]
    log_path: Path
    environment: dict[str, str] = field(default_factory=child_environment)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the child; its whole process group is stopped by `stop`."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 (argv is built by us, no shell)
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment,
                start_new_session=True,
            )

    @property
    def running(self) -> bool:
        """Whether the child was started and has not exited."""
        return self.process is not None and self.process.poll() is None

    def exit_description(self) -> str:
        """Say how the child ended and where its log is."""
        code = None if self.process is None else self.process.returncode
        return f"{self.name} exited with code {code}; see {self.log_path}"

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Send SIGTERM to the child's process group, then SIGKILL after `grace` seconds."""
        if self.process is None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self._reap_group()

    def _reap_group(self) -> None:
        """Kill what is left of the group (grandchildren that outlived their parent)."""
        assert self.process is not None  # noqa: S101 (only called after start)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(timeout=STOP_GRACE_SECONDS)


def wait_until_healthy(child: ChildProcess, url: str, timeout: float) -> None:
    """Poll `url` until it answers 200; raise ControllerError if the child dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.running:
            raise ControllerError(child.exit_description())
        try:
            with urllib.request.urlopen(url, timeout=2.0) as answer:  # noqa: S310 (our URL)
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise ControllerError(f"{child.name} did not become healthy at {url} within {timeout:.0f} s")
