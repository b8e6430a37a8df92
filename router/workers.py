"""A router's `--workers`: the processes beside the first, started, kept running, stopped.

The first process serves too and owns the rest, as gunicorn's and uvicorn's masters do for
their workers: a worker that dies (killed, out of memory) is started again after the same
backoff as any child of ours (`common.supervision.next_restart`), and the sum of the metrics
still holds its counts (`router.telemetry.sharedvalues`). Each worker leads its own process
group, announced to the guardian: if the first process is SIGKILLed, the workers (which hold
the port too) are stopped with it.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from dataclasses import dataclass, field

from common.supervision import (
    GUARDIAN,
    ProcessIdentity,
    next_restart,
    start_announced,
    stop_announced,
)

log = logging.getLogger("router")

CHECK_SECONDS = 0.5
"""How often the first process looks for a worker that died."""


@dataclass
class Worker:
    """One worker process and how often it was started again in a row."""

    process: subprocess.Popen[bytes]
    identity: ProcessIdentity
    started: float = field(default_factory=time.monotonic)
    restarts: int = 0


@dataclass
class Workers:
    """The workers of one router: `count` processes running `argv`."""

    argv: list[str]
    count: int
    workers: list[Worker] = field(default_factory=list)

    def start(self) -> None:
        """Start every worker."""
        self.workers = [Worker(*start_announced(self.argv)) for _ in range(self.count)]

    async def keep_running(self) -> None:
        """Start again every worker that dies, until cancelled."""
        while True:
            await asyncio.sleep(CHECK_SECONDS)
            for number, worker in enumerate(self.workers):
                code = worker.process.poll()
                if code is None:
                    continue
                GUARDIAN.forget(worker.identity)
                ran = time.monotonic() - worker.started
                restarts, delay = next_restart(worker.restarts, ran)
                log.warning(
                    "router worker %d (pid %d) exited with %s after %.0f s; starting it again"
                    " in %.0f s",
                    number, worker.process.pid, code, ran, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)
                self.workers[number] = Worker(*start_announced(self.argv), restarts=restarts)
                log.info(
                    "router worker %d started again: pid %d",
                    number,
                    self.workers[number].process.pid,
                )

    def stop(self, grace: float) -> None:
        """Stop every worker (each drains as the first did; past `grace`, it is killed)."""
        stop_announced([(worker.process, worker.identity) for worker in self.workers], grace)
