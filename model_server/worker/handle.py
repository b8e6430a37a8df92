"""The serving process's side of its MLflow worker (`model_server/worker/process.py`).

The first worker resolves the model URI, downloads, loads and warms the model and checks the
fast path. Then one of two things happens:

- The fast path is portable (compiled, or XGBoost's or LightGBM's predict on arrays): the
  worker sends it over (pickled by value), this process checks it again on the same probes,
  and serves plain rows with it while importing neither MLflow nor pandas (scikit-learn and
  the boosting libraries would import pandas; it is kept out, see `keep_out_pandas`). Requests the
  fast path does not answer go to the worker; after `idle_seconds` without one it is stopped,
  and the next such request starts another (which loads the downloaded copy: seconds).
- Otherwise MLflow's path answers most requests anyway: the worker is stopped and the model
  is loaded in this process from the downloaded copy, as if there were no worker.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import itertools
import logging
import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from contracts.errors import error_body
from model_server.fastpath.choose import FastPath, disagreement_with_mlflow
from model_server.model.loading import ModelLoadError, ResolvedModel, load
from model_server.model.scoring import JSON, Scored
from model_server.model.served import ServedModel, served_in_process
from model_server.worker.process import (
    Answer,
    Failed,
    Ready,
    Resolved,
    Score,
    Start,
    read_frame,
    write_frame,
)

log = logging.getLogger("model_server")

IDLE_CHECK_SECONDS = 0.25
KEPT_OUT = ("pandas", "pyarrow")


def keep_out_pandas() -> None:
    """Make pandas and pyarrow unimportable in this process, unless something imported them.

    scikit-learn imports pandas (and pandas pyarrow: 64 MiB) only to accept data frames; the
    fast path hands it arrays. They are made absent, as if not installed: a finder refuses them
    (a `None` in `sys.modules` would not do: scikit-learn looks modules up there). The fast
    path is checked again after this, in this process.
    """
    if not any(name in sys.modules for name in KEPT_OUT):
        sys.meta_path.insert(0, _KeptOut())


class _KeptOut(importlib.abc.MetaPathFinder):
    """Refuses to find pandas and pyarrow, as if they were not installed."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        """Refuse the kept-out packages; leave every other module to the next finder."""
        if fullname.split(".", 1)[0] in KEPT_OUT:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)


class _Process:
    """One running worker: its pipes, and the requests it has not answered yet."""

    def __init__(self, start: Start) -> None:
        self.popen = subprocess.Popen(  # noqa: S603 (this Python, our module, our pid)
            [sys.executable, "-m", "model_server.worker.process", str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        # Both are pipes (PIPE above), never None.
        self.stdin: IO[bytes] = self.popen.stdin  # type: ignore[assignment]
        self.stdout: IO[bytes] = self.popen.stdout  # type: ignore[assignment]
        self.pending: dict[int, Future[Scored]] = {}
        self.write_lock = threading.Lock()
        self.send(start)

    def send(self, message: object) -> None:
        """Write one message (from any thread)."""
        with self.write_lock:
            write_frame(self.stdin, message)

    def receive(self) -> Any:
        """Read the next message, or None once the worker's output ended."""
        return read_frame(self.stdout)

    def listen(self, on_exit: Callable[[_Process], None]) -> None:
        """Hand each answer to its caller until the worker's output ends."""

        def run() -> None:
            while (message := self.receive()) is not None:
                if isinstance(message, Answer):
                    future = self.pending.pop(message.id, None)
                    if future is not None:
                        future.set_result(message.scored)
            on_exit(self)

        threading.Thread(target=run, name="mlflow-worker-answers", daemon=True).start()

    def stop(self) -> None:
        """Close its input: it finishes what is in flight and exits."""
        with contextlib.suppress(OSError):
            self.stdin.close()


def unavailable(message: str) -> Scored:
    """Answer 503 in MLflow's error shape: MLflow's path cannot answer now."""
    return Scored(503, error_body("TEMPORARILY_UNAVAILABLE", message), JSON)


class MlflowWorker:
    """Starts, restarts and stops the MLflow worker; answers requests through it."""

    def __init__(self, folder: Path, idle_seconds: float) -> None:
        self._download_to = folder
        self._idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._running: _Process | None = None
        self._resolved: ResolvedModel | None = None
        self._local: str | None = None
        self._ids = itertools.count()
        self._last_used = time.monotonic()
        self._closed = threading.Event()

    def resolve(self, model_uri: str) -> ResolvedModel:
        """Start the first worker; return the version it pinned the URI to."""
        start = Start(model_uri, None, str(self._download_to), None, choose_fast_path=True)
        self._running = _Process(start)
        message = self._running.receive()
        if isinstance(message, Resolved):
            self._resolved = message.resolved
            return message.resolved
        self.close()
        raise ModelLoadError(self._failure(message))

    def load(self, resolved: ResolvedModel) -> ServedModel:
        """Wait for the first worker's model; serve with its fast path or load it here."""
        process = self._running
        if process is None:
            raise ModelLoadError("the model server is stopping")
        message = process.receive()
        if not isinstance(message, Ready):
            self.close()
            raise ModelLoadError(self._failure(message))
        self._local = message.local
        if message.fast_path is None:
            self.close()
            return served_in_process(load(resolved, local=Path(message.local)))
        process.listen(self._exited)
        self._last_used = time.monotonic()
        idle = threading.Thread(target=self._stop_when_idle, name="mlflow-worker-idle", daemon=True)
        idle.start()
        fast, path = self._check_here(message)
        description = replace(message.description, path=path)
        return ServedModel(resolved, description, fast, self)

    def _check_here(self, ready: Ready) -> tuple[FastPath | None, str]:
        """Load the fast path in this process and check it again on the worker's probes."""
        keep_out_pandas()
        try:
            fast: FastPath = pickle.loads(ready.fast_path or b"")  # noqa: S301 (our worker)
        # Whatever stops it loading here, MLflow's path in the worker still answers.
        except Exception as error:  # noqa: BLE001
            return None, f"MLflow's path: the fast path cannot be loaded here: {error!r}"
        verdict = disagreement_with_mlflow(fast, ready.probes)
        if verdict is not None:
            return None, f"MLflow's path: in the serving process, {verdict}"
        return fast, ready.description.path

    def score(self, body: bytes, content_type: str) -> Scored:
        """Answer through the worker, starting one if it was stopped."""
        with self._lock:
            if self._closed.is_set():
                return unavailable("the model server is stopping")
            process = self._running
            if process is None:
                try:
                    process = self._start_again()
                except ModelLoadError as error:
                    return unavailable(f"MLflow's path could not start: {error}")
            request_id = next(self._ids)
            future: Future[Scored] = Future()
            process.pending[request_id] = future
            self._last_used = time.monotonic()
            try:
                process.send(Score(request_id, body, content_type))
            except OSError:
                process.pending.pop(request_id, None)
                return unavailable("MLflow's worker process exited; the next request starts one")
        return future.result()

    def where(self) -> str:
        """Say whether the worker runs now, for `/metadata`."""
        if self._running is not None:
            return f"worker process {self._running.popen.pid}"
        return "worker process, stopped while idle (started again when needed)"

    def close(self) -> None:
        """Stop the worker (it finishes what is in flight) and start no more."""
        with self._lock:
            self._closed.set()
            process, self._running = self._running, None
        if process is not None:
            process.stop()
            try:
                process.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.popen.kill()

    def _start_again(self) -> _Process:
        """Start a worker on the downloaded copy (called holding the lock)."""
        if self._resolved is None or self._local is None:
            raise ModelLoadError("the model was never loaded")
        start = Start(self._resolved.uri, self._resolved, str(self._download_to), self._local,
                      choose_fast_path=False)  # fmt: skip
        log.info("starting MLflow's worker process for a request the fast path does not answer")
        process = _Process(start)
        message = process.receive()
        if not isinstance(message, Ready):
            process.stop()
            raise ModelLoadError(self._failure(message))
        process.listen(self._exited)
        self._running = process
        return process

    def _exited(self, process: _Process) -> None:
        """Fail what the worker had not answered once its output ended."""
        with self._lock:
            if self._running is process:
                self._running = None
            pending, process.pending = process.pending, {}
        for future in pending.values():
            future.set_result(unavailable("MLflow's worker process exited while answering"))
        process.popen.wait()

    def _stop_when_idle(self) -> None:
        while not self._closed.wait(IDLE_CHECK_SECONDS):
            with self._lock:
                process = self._running
                idle = time.monotonic() - self._last_used >= self._idle_seconds
                if process is None or process.pending or not idle:
                    continue
                self._running = None
            log.info("stopping MLflow's worker process: idle for %.0f s", self._idle_seconds)
            process.stop()

    @staticmethod
    def _failure(message: object) -> str:
        if isinstance(message, Failed):
            return message.message
        return "MLflow's worker process exited while loading the model (see its log above)"
