"""Child processes: started with a log, waited on until healthy, stopped, never a stranger hit.

Three rules, each kept in one place here:
- A child runs in its own process group, so a stop reaches its own children (MLflow's
  workers, a router's `--workers`).
- A child is known by its `ProcessIdentity` (pid and the kernel's start time), checked before
  every signal: a pid recorded in a state file and since reused by an unrelated process is
  left alone.
- A child dies with its parent: every group is announced to the parent's guardian
  (`common.guardian`), which stops the groups still announced when the parent exits in any way,
  SIGKILL included, so nothing is left listening on the system's ports. A parent may ask for
  a handover (`Guardian.hand_over`): the guardian then waits for a successor to take the
  groups over before stopping them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

STOP_GRACE_SECONDS = 10.0
RESTART_BACKOFF = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
"""Seconds before the n-th restart in a row of a child that died (the last repeats)."""
PROC = Path("/proc")


class ChildFailed(Exception):
    """A child exited or did not become healthy in time (the message says which, and its log)."""


def restart_delay(restarts: int) -> float:
    """Seconds to wait before restarting a child that has been restarted `restarts` times."""
    return RESTART_BACKOFF[min(restarts, len(RESTART_BACKOFF) - 1)]


STEADY_SECONDS = 30.0
"""A child that ran this long before dying is restarted at once: its backoff starts over."""


def next_restart(restarts: int, ran_s: float) -> tuple[int, float]:
    """Return a dead child's restarts in a row and the seconds to wait before starting it again.

    `restarts` is how many times in a row it was restarted before, `ran_s` how long it ran
    this time. A crash loop backs off (`restart_delay`); a child that had run steadily is a
    new story, started again at once, as gunicorn and systemd do.
    """
    if ran_s >= STEADY_SECONDS:
        return 0, 0.0
    return restarts + 1, restart_delay(restarts)


@dataclass(frozen=True)
class ProcessIdentity:
    """A process as the kernel knows it: its pid and its start time (clock ticks since boot).

    The pair names one process for the machine's uptime; a pid alone is reused after the
    process is reaped.
    """

    pid: int
    started: int

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity | None:
        """Return the identity of the process `pid` now, or None if there is none."""
        stat = _stat(pid)
        return None if stat is None else cls(pid, stat.started)

    def alive(self) -> bool:
        """Whether this very process runs (not a zombie, not a newcomer with the same pid)."""
        stat = _stat(self.pid)
        return stat is not None and stat.started == self.started and stat.state != "Z"

    def group_alive(self) -> bool:
        """Whether the process group this process leads still has a running member."""
        return self._group_is_ours() and any(
            stat.pgid == self.pid and stat.state != "Z" for stat in process_table()
        )

    def signal_group(self, sig: signal.Signals) -> None:
        """Send `sig` to the group this process leads, if the group is still this one's."""
        if not self._group_is_ours():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def _group_is_ours(self) -> bool:
        """Whether the group numbered `pid` can only be the one this process started.

        Linux does not reuse a pid while a process group of that number has a member, so if
        the pid is now a newcomer's our group is gone; if no process has the pid, only our
        group's leftovers can carry its number.
        """
        stat = _stat(self.pid)
        return stat is None or stat.started == self.started


def stop_groups(identities: list[ProcessIdentity], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM every group, wait up to `grace` for them to end, then SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for identity in identities:
            identity.signal_group(sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            identities = [identity for identity in identities if identity.group_alive()]
            if not identities:
                return
            time.sleep(0.05)


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
    """Raise ChildFailed naming `what` if `host:port` cannot be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As servers do: a listener still refuses the bind, a closed socket in TIME_WAIT does not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ChildFailed(
                f"{what} cannot listen on {host}:{port}: {error.strerror or error}"
            ) from None


def free_port(host: str) -> int:
    """Return a port on `host` that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@dataclass
class ChildProcess:
    """One child process in its own process group, its output appended to a log file."""

    name: str
    argv: list[str]
    log_path: Path
    environment: dict[str, str] = field(default_factory=child_environment)
    process: subprocess.Popen[bytes] | None = None
    identity: ProcessIdentity | None = None
    started_at: float = 0.0
    """When it was last started (monotonic clock)."""

    def start(self) -> None:
        """Start the child and announce its group to this process's guardian."""
        self.started_at = time.monotonic()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process, self.identity = start_announced(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment,
            )

    @property
    def running(self) -> bool:
        """Whether the child was started and has not exited."""
        return self.process is not None and self.process.poll() is None

    def exit_description(self) -> str:
        """Say how the child ended and where its log is."""
        code = None if self.process is None else self.process.returncode
        return f"{self.name} exited with code {code}; see {self.log_path}{_tail(self.log_path)}"

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Stop the child's whole group (SIGTERM, then SIGKILL after `grace`), and reap it."""
        if self.process is None or self.identity is None:
            return
        stop_announced([(self.process, self.identity)], grace)


def stop_requested() -> asyncio.Event:
    """Return an event set when this process gets SIGTERM or SIGINT (Ctrl-C).

    Every long-running part (router, model server, controller) stops on it in the same way:
    stop accepting, finish what was received, exit 0.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def start_announced(
    argv: list[str], **options: Any
) -> tuple[subprocess.Popen[bytes], ProcessIdentity]:
    """Start `argv` leading a process group of its own, announced to the guardian.

    `options` go to Popen. If this process dies, even by SIGKILL, the guardian stops the group;
    `stop_announced` stops it here and tells the guardian.
    """
    process = subprocess.Popen(argv, start_new_session=True, **options)  # noqa: S603 (no shell)
    # Unreaped, an exited child is a zombie whose start time can still be read.
    identity = ProcessIdentity.of(process.pid) or ProcessIdentity(process.pid, 0)
    GUARDIAN.announce(identity)
    return process, identity


def stop_announced(
    children: list[tuple[subprocess.Popen[Any], ProcessIdentity]], grace: float
) -> None:
    """Stop announced children's groups (SIGTERM, SIGKILL after `grace`); reap them.

    The one way a parent stops the processes it started: the guardian is told of each.
    """
    stop_groups([identity for _, identity in children], grace)
    for process, identity in children:
        process.wait(timeout=STOP_GRACE_SECONDS)
        GUARDIAN.forget(identity)


async def wait_until_healthy(child: ChildProcess, url: str, within: float) -> None:
    """Poll `url` until it answers 200; raise ChildFailed if the child dies or time runs out."""
    deadline = time.monotonic() + within
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while time.monotonic() < deadline:
            if not child.running:
                raise ChildFailed(child.exit_description())
            try:
                async with session.get(url) as answer:
                    if answer.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.2)
    raise ChildFailed(f"{child.name} did not become healthy at {url} within {within:.0f} s")


class Guardian:
    """This process's guardian (see `common.guardian`), started with the first child."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._owner = 0
        self._announced: dict[int, ProcessIdentity] = {}
        self._handover_s = 0.0

    def hand_over(self, seconds: float) -> None:
        """Once this process dies, have its guardian wait `seconds` before stopping anything.

        A successor may take the groups over meanwhile: it stops this guardian (SIGKILL, see
        `identity`) and announces them to its own. Call before the first child is started.
        """
        self._handover_s = seconds

    def identity(self) -> ProcessIdentity | None:
        """Return this process's guardian, if one runs (a successor may stop it)."""
        with self._lock:
            process = self._process
            if process is None or self._owner != os.getpid() or process.poll() is not None:
                return None
            return ProcessIdentity.of(process.pid)

    def announce(self, identity: ProcessIdentity) -> None:
        """Have the guardian stop this group if this process dies before `forget`."""
        with self._lock:
            self._announced[identity.pid] = identity
            self._send(f"+ {identity.pid} {identity.started}\n")

    def forget(self, identity: ProcessIdentity) -> None:
        """Tell the guardian the group was stopped here: nothing to do for it."""
        with self._lock:
            self._announced.pop(identity.pid, None)
            self._send(f"- {identity.pid}\n")

    def _send(self, line: str) -> None:
        """Write to the guardian, starting one (again) if there is none alive in this process."""
        for _attempt in range(2):
            if (
                self._process is None
                or self._owner != os.getpid()
                or self._process.poll() is not None
            ):
                self._start()
            assert self._process is not None and self._process.stdin is not None  # noqa: S101
            try:
                self._process.stdin.write(line.encode())
                self._process.stdin.flush()
                return
            except BrokenPipeError:
                self._process = None

    def _start(self) -> None:
        """Start a guardian told of every group announced so far."""
        self._process = subprocess.Popen(  # noqa: S603 (our own module, no shell)
            [
                sys.executable,
                "-m",
                "common.guardian",
                str(STOP_GRACE_SECONDS),
                str(self._handover_s),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._owner = os.getpid()
        assert self._process.stdin is not None  # noqa: S101 (stdin=PIPE)
        for identity in self._announced.values():
            self._process.stdin.write(f"+ {identity.pid} {identity.started}\n".encode())
        self._process.stdin.flush()


GUARDIAN = Guardian()


@dataclass(frozen=True)
class ProcessStat:
    """What /proc/PID/stat says of a process that matters here."""

    pid: int
    parent: int
    pgid: int
    state: str
    """`Z` for a zombie: exited, not yet reaped."""
    started: int


def _stat(pid: int) -> ProcessStat | None:
    """Read what /proc/PID/stat says of a process (None if there is no such process)."""
    try:
        raw = (PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    return _parse_stat(pid, raw)


def process_table() -> list[ProcessStat]:
    """Return every process of the machine, as /proc shows it now."""
    stats = []
    for entry in os.scandir(PROC):
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                stats.append(stat)
    return stats


def _parse_stat(pid: int, raw: bytes) -> ProcessStat:
    """Fields after the command name (which may hold spaces and parentheses): see proc(5)."""
    fields = raw[raw.rindex(b")") + 2 :].split()
    return ProcessStat(
        pid=pid, parent=int(fields[1]), pgid=int(fields[2]), state=fields[0].decode(),
        started=int(fields[19]),
    )  # fmt: skip


def _tail(path: Path, lines: int = 5) -> str:
    """Return the log's last lines, on one line, to say why a child died."""
    try:
        last = path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return (": " + " | ".join(line.strip() for line in last)) if last else ""
