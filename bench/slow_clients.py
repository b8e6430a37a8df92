"""What slow clients cost everyone else: /health and /invocations latency through the router
alone, then while `--tricklers` connections trickle chunked bodies to /predict and /feedback.

Two trivial upstreams (bench/trivial_upstream.py) and one router (one worker, its defaults).
For each phase, `--requests` GET /health and as many POST /invocations are sent one after the
other on one keep-alive connection; the report gives p50, p99 and max of each, and the ratio of
the trickled phase to the quiet one in the same run. The tricklers send a chunk of one byte to
every connection every `--pace` seconds and reconnect when the router closes one (its total
body deadline, `body_timeout_s`, 60 s by default); the number of tricklers connected is checked
before and after the trickled phase.

    .venv/bin/python bench/slow_clients.py --tricklers 200 --requests 2000
"""

from __future__ import annotations

import argparse
import http.client
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.router import ROW, Proc, start, stop, upstreams, write_split
from tests.helpers import free_port


class Tricklers:
    """`count` connections each sending a chunked body a byte at a time, for as long as it runs."""

    def __init__(self, port: int, count: int, pace: float) -> None:
        self._port = port
        self._pace = pace
        self._stop = threading.Event()
        self._sockets: list[socket.socket | None] = [None] * count
        self.reconnects = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _open(self, number: int) -> socket.socket:
        path = b"/predict" if number % 2 else b"/feedback"
        connection = socket.create_connection(("127.0.0.1", self._port))
        connection.sendall(
            b"POST %s HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer t\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"1\r\n{\r\n" % path
        )
        return connection

    def start(self) -> None:
        """Open every connection, then keep them trickling in the background."""
        for number in range(len(self._sockets)):
            self._sockets[number] = self._open(number)
        self._thread.start()

    def connected(self) -> int:
        """How many connections are open and still sending."""
        return sum(connection is not None for connection in self._sockets)

    def _run(self) -> None:
        while not self._stop.wait(self._pace):
            for number, connection in enumerate(self._sockets):
                try:
                    assert connection is not None
                    connection.sendall(b"1\r\n \r\n")
                except (OSError, AssertionError):
                    if connection is not None:
                        connection.close()
                    self.reconnects += 1
                    self._sockets[number] = self._open(number)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for connection in self._sockets:
            if connection is not None:
                connection.close()


def latencies(port: int, requests: int) -> dict[str, list[float]]:
    """Seconds each GET /health and POST /invocations took, in turn on one connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    taken: dict[str, list[float]] = {"/health": [], "/invocations": []}
    headers = {"Content-Type": "application/json"}
    for _ in range(requests):
        for path in taken:
            started = time.perf_counter()
            if path == "/health":
                connection.request("GET", path)
            else:
                connection.request("POST", path, body=ROW, headers=headers)
            answer = connection.getresponse()
            answer.read()
            taken[path].append(time.perf_counter() - started)
            if answer.status != 200:
                raise RuntimeError(f"{path} answered {answer.status}")
    connection.close()
    return taken


def summary(seconds: list[float]) -> tuple[float, float, float]:
    """p50, p99 and max in milliseconds."""
    cuts = statistics.quantiles(seconds, n=100)
    return cuts[49] * 1000, cuts[98] * 1000, max(seconds) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tricklers", type=int, default=200)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--pace", type=float, default=1.0)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        stable, canary = upstreams("trivial", folder)
        port = free_port()
        router: Proc = start(
            [sys.executable, "-m", "mlcanary", "router", "--config",
             str(write_split(stable, canary, folder)), "--port", str(port)],
            port,
        )  # fmt: skip
        try:
            latencies(port, 200)  # warm up
            quiet = latencies(port, arguments.requests)
            tricklers = Tricklers(port, arguments.tricklers, arguments.pace)
            tricklers.start()
            time.sleep(2 * arguments.pace)  # every trickler has sent a few chunks
            before = tricklers.connected()
            trickled = latencies(port, arguments.requests)
            after = tricklers.connected()
            tricklers.close()
        finally:
            for proc in (router, stable, canary):
                stop(proc)
    print(
        f"tricklers: {arguments.tricklers} connected before {before}, after {after}, "
        f"reconnected {tricklers.reconnects}; {arguments.requests} requests of each path a phase"
    )
    print("| path | phase | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|")
    for path in quiet:
        for phase, taken in (("quiet", quiet), (f"{arguments.tricklers} trickling", trickled)):
            p50, p99, most = summary(taken[path])
            print(f"| `{path}` | {phase} | {p50:.2f} | {p99:.2f} | {most:.1f} |")
    for path in quiet:
        (q50, q99, _), (t50, t99, _) = summary(quiet[path]), summary(trickled[path])
        print(f"{path}: trickled / quiet p50 {t50 / q50:.2f}x, p99 {t99 / q99:.2f}x")


if __name__ == "__main__":
    main()
