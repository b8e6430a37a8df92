"""MLflow's path in a process of its own, so the serving process need not hold MLflow.

MLflow, pandas and pyarrow take most of a model server's memory, yet a model with a compiled
fast path needs them only to start (resolve, download, load, warm, check the fast path) and
for the few requests plain rows do not cover (CSV, params, rows the fast path refuses). This
process does exactly that for the serving process (`model_server/worker/handle.py`), which
starts it, talks to it over its stdin and stdout, and stops it when it has been idle.

The conversation, one pickled message per frame (both ends are this package, started by the
same user; nothing else can write to the pipes):
1. in `Start`; out `Resolved` (when asked to resolve), then `Ready` or `Failed`;
2. then any number of `Score` in and `Scored` out, matched by id, several in flight;
3. end of input: finish what is in flight and exit.

Run only as `python -m model_server.worker.process PARENT_PID` by the serving process.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import struct
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from model_server.fastpath.choose import Probes
from model_server.model.loading import Description, ModelLoadError, ResolvedModel
from model_server.model.scoring import Scored

HEADER = struct.Struct(">I")
SCORING_THREADS = 2
"""As many requests as the serving process's MLflow threads send at once."""


@dataclass(frozen=True)
class Start:
    """What to load: resolve `model_uri` (when `resolved` is None) or load a known version."""

    model_uri: str
    resolved: ResolvedModel | None
    download_to: str
    """An empty folder to download the model into, on the first start."""
    local: str | None
    """The model downloaded by the first worker: a restarted one loads it from there."""
    choose_fast_path: bool


@dataclass(frozen=True)
class Resolved:
    """The concrete version the model URI points at."""

    resolved: ResolvedModel


@dataclass(frozen=True)
class Ready:
    """Loaded and warm; with the fast path chosen, if it can be carried to another process."""

    description: Description
    local: str
    """Where the downloaded model is: a restarted worker loads it from there."""
    fast_path: bytes | None
    """The chosen fast path if portable, pickled by value (cloudpickle), or None."""
    probes: Probes
    """The start-up probes and MLflow's answers, for the serving process to check again."""


@dataclass(frozen=True)
class Failed:
    """The model cannot be resolved, loaded or warmed: why, as the server reports it."""

    message: str


@dataclass(frozen=True)
class Score:
    """A request to answer through MLflow's path."""

    id: int
    body: bytes
    content_type: str


@dataclass(frozen=True)
class Answer:
    """The answer to the `Score` with the same id."""

    id: int
    scored: Scored


def write_frame(stream: IO[bytes], message: object) -> None:
    """Write one message; callers that share `stream` hold a lock around this."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(HEADER.pack(len(data)) + data)
    stream.flush()


def read_frame(stream: IO[bytes]) -> Any:
    """Read one message, or None at the end of the stream."""
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    size = HEADER.unpack(header)[0]
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)  # noqa: S301 (our own parent process, over a private pipe)


def die_with_parent(parent: int) -> None:
    """Ask Linux to kill this process when its parent dies (a SIGKILLed server leaves none).

    Linux means the parent *thread*: the serving process starts workers from its main thread
    and its MLflow threads, which live as long as it serves. `parent` is the serving process's
    pid, given on the command line: in a container it is 1, so "my parent is now 1" cannot
    tell that it died before the request took effect; "my parent is not `parent`" can.
    """
    if sys.platform == "linux":
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:
        print("MLflow's worker: the serving process is gone; exiting", file=sys.stderr)
        os._exit(1)


def start(order: Start, output: IO[bytes]) -> Any:
    """Resolve if asked, load and warm; return the loaded model, or None after `Failed`."""
    from model_server.model.loading import describe, load, resolve

    try:
        resolved = order.resolved
        if resolved is None:
            resolved = resolve(order.model_uri)
            write_frame(output, Resolved(resolved))
        model = load(
            resolved,
            download_to=Path(order.download_to),
            local=Path(order.local) if order.local else None,
            choose=order.choose_fast_path,
        )
    except ModelLoadError as error:
        write_frame(output, Failed(str(error)))
        return None
    portable = None
    if model.fast_path is not None and model.fast_path.portable:
        import cloudpickle  # type: ignore[import-untyped]

        portable = cloudpickle.dumps(model.fast_path)
    probes = model.probes if portable else []
    write_frame(output, Ready(describe(model), str(model.local), portable, probes))
    return model


def main() -> None:
    """Serve one serving process until its end of the pipe closes."""
    from model_server.model.scoring import score_with_mlflow

    die_with_parent(int(sys.argv[1]))
    # Stopping is the serving process's to decide: it finishes the requests in flight (some
    # waiting for this process), then closes the pipe. Ctrl-C or a TERM sent to the whole
    # process group must not end this process first.
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, signal.SIG_IGN)
    # The frames keep the pipe that was standard output; whatever else writes there (a model's
    # print, a library's C code: LightGBM logs to it) goes to standard error instead.
    output = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    source = sys.stdin.buffer
    order = read_frame(source)
    if not isinstance(order, Start):
        sys.exit(2)
    model = start(order, output)
    if model is None:
        sys.exit(1)
    lock = threading.Lock()

    def answer(request: Score) -> None:
        scored = score_with_mlflow(model, request.body, request.content_type)
        with lock:
            write_frame(output, Answer(request.id, scored))

    with ThreadPoolExecutor(SCORING_THREADS, thread_name_prefix="mlflow-scoring") as pool:
        while (request := read_frame(source)) is not None:
            pool.submit(answer, request)


if __name__ == "__main__":
    # The messages must be `model_server.worker.process`'s classes, as the serving process
    # pickles them, not copies defined in `__main__`.
    from model_server.worker import process

    process.main()
