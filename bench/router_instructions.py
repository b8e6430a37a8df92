"""Machine instructions the router spends per proxied request, counted by valgrind's callgrind.

Run: .venv/bin/python bench/router_instructions.py [--requests 1000] [--data-plane raw|aiohttp]
                                                    [--protocol mlflow|v2]
Needs valgrind (Debian: `apt-get install valgrind`). Two trivial upstreams (bench/router.py's),
the router at canary weight 10 under callgrind, one client sending `POST /invocations` (or,
with `--protocol v2`, the same row as a V2 inference request) one after another on one
keep-alive connection. The count is zeroed after a warm-up and dumped after
`--requests` more, so start-up is left out; the router's periodic work in that time (health
checks, the timeout sweep, the reload check) is in. Unlike CPU time on this shared 2-core
machine, the figure moves by well under 1% from run to run: it shows what a change to the hot
path costs before bench/router.py shows it against nginx.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.router import ROW, Proc, start, stop, upstreams, write_split
from tests.helpers import free_port

_SPLIT = json.loads(ROW)["dataframe_split"]
V2_ROW = json.dumps({"inputs": [
    {"name": name, "shape": [1, 1], "datatype": "FP64", "data": [float(value)]}
    for name, value in zip(_SPLIT["columns"], _SPLIT["data"][0], strict=True)
]})  # fmt: skip
TARGETS = {
    "mlflow": (b"/invocations", ROW),
    "v2": (b"/v2/models/StudentExamPredictor/infer", V2_ROW),
}


def request_of(protocol: str) -> bytes:
    """The one request the client repeats, in `protocol`."""
    target, body = TARGETS[protocol]
    return (
        b"POST %s HTTP/1.1\r\nHost: router\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (target, len(body), body.encode())
    )


def send(client: socket.socket, count: int, request: bytes) -> None:
    """Send `count` requests one at a time and read each answer (framed by Content-Length)."""
    buffered = b""
    for _ in range(count):
        client.sendall(request)
        while b"\r\n\r\n" not in buffered:
            buffered += client.recv(65536)
        head, _, buffered = buffered.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"the router answered {head[:40]!r}")
        match = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        length = int(match.group(1)) if match else 0
        while len(buffered) < length:
            buffered += client.recv(65536)
        buffered = buffered[length:]


def callgrind(pid: int, command: str) -> None:
    """Zero or dump the counts of the process under callgrind."""
    subprocess.run(["callgrind_control", command, str(pid)], check=True, capture_output=True)


def total_instructions(folder: Path) -> int:
    """Read the instruction total of the last dump callgrind wrote in `folder`."""
    dumps = sorted(folder.glob("callgrind.out.*"), key=lambda path: path.stat().st_mtime)
    text = dumps[-1].read_text(errors="replace")
    match = re.search(r"^(?:summary|totals): *(\d+)", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no instruction total in {dumps[-1]}")
    return int(match.group(1))


def router_under_callgrind(stable: Proc, canary: Proc, folder: Path, plane: str) -> Proc:
    """Start the router at canary weight 10 under callgrind; wait for its /ping."""
    path = write_split(stable, canary, folder)
    port = free_port()
    argv = [
        *("valgrind", "--tool=callgrind", f"--callgrind-out-file={folder}/callgrind.out.%p"),
        *(sys.executable, "-m", "mlcanary", "router", "--config", str(path)),
        *("--port", str(port), "--data-plane", plane),
    ]  # fmt: skip
    return start(argv, port, "/ping")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warm-up", type=int, default=200)
    parser.add_argument("--data-plane", choices=["aiohttp", "raw"], default="raw")
    parser.add_argument("--protocol", choices=list(TARGETS), default="mlflow")
    parser.add_argument(
        "--keep", type=Path, help="copy callgrind's dump here, for callgrind_annotate"
    )
    arguments = parser.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed: apt-get install valgrind")
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        stable, canary = upstreams("trivial", folder)
        router = None
        try:
            router = router_under_callgrind(stable, canary, folder, arguments.data_plane)
            with socket.create_connection(("127.0.0.1", router.port), timeout=60) as client:
                request = request_of(arguments.protocol)
                send(client, arguments.warm_up, request)
                callgrind(router.process.pid, "--zero")
                send(client, arguments.requests, request)
                callgrind(router.process.pid, "--dump")
            per_request = total_instructions(folder) / arguments.requests
            if arguments.keep is not None:
                dumps = sorted(folder.glob("callgrind.out.*"), key=lambda p: p.stat().st_mtime)
                shutil.copy(dumps[-1], arguments.keep)
        finally:
            for proc in (router, stable, canary):
                if proc is not None:
                    stop(proc)
    print(
        f"router ({arguments.data_plane} plane, {arguments.protocol}): {per_request:,.0f}"
        " instructions per request"
        f" ({arguments.requests} sequential keep-alive requests after {arguments.warm_up})"
    )


if __name__ == "__main__":
    main()
