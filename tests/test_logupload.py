"""The prediction log on object storage, for real: a router and a controller on an S3 bucket
(moto's S3 server, in this process, spoken to through s3fs), labels joined from it, exported
from it, and what a SIGKILLed router had spooled uploaded by the next one."""

from __future__ import annotations

import csv
import json
import signal
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from moto.server import ThreadedMotoServer

from common.predictionlog import file_for, read_predictions
from router.predictionlog.upload import SpoolUploader
from tests.conftest import TrainedRegistry
from tests.helpers import run_mlcanary, wait_until
from tests.systems import System, call_json, copied_registry, running_system
from training.dataset import DEFAULT_PATH, FEATURES, load_dataset

pytestmark = pytest.mark.slow  # real MLflow, model servers or whole systems

BUCKET_URL = "s3://mlcanary-test/predictions"
COUNT = 12


@pytest.fixture
def bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An empty S3 bucket on a server of this test's own; the environment points fsspec (here
    and in the processes the test starts) at it."""
    import fsspec.config
    import s3fs

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for name, value in {
            "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1", "FSSPEC_S3_ENDPOINT_URL": endpoint,
        }.items():  # fmt: skip
            monkeypatch.setenv(name, value)
        # fsspec read the environment when first imported: this process is told directly.
        monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": endpoint})
        # moto keeps its buckets in the process, across servers: start from none.
        urllib.request.urlopen(
            urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=30
        ).close()
        s3fs.S3FileSystem(endpoint_url=endpoint).mkdir("mlcanary-test")
        yield BUCKET_URL
    finally:
        server.stop()


@contextmanager
def _system(
    trained_registry: TrainedRegistry, tmp_path: Path, url: str, upload_s: str
) -> Iterator[System]:
    folder = tmp_path / "registry"
    folder.mkdir()
    with running_system(
        copied_registry(trained_registry.settings, folder), tmp_path,
        controller_options=("--prediction-log", url),
        router_options=("--prediction-log", url, "--prediction-log-upload-interval", upload_s),
    ) as built:  # fmt: skip
        yield built


def _send(system: System, count: int) -> list[str]:
    """Send `count` requests through the router; return their request ids."""
    ids = []
    rows = load_dataset(DEFAULT_PATH).head(count)[list(FEATURES)].to_dict(orient="records")
    for row in rows:
        request = urllib.request.Request(
            f"{system.router_url}/invocations",
            data=json.dumps({"dataframe_records": [row]}).encode(),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=30) as answer:
            ids.append(answer.headers["X-Request-Id"])
    return ids


def _logged(url: str) -> list[str]:
    return [record.request_id for record in read_predictions(url)]


def test_the_log_is_uploaded_in_parts_joined_with_labels_and_exported(
    trained_registry: TrainedRegistry, tmp_path: Path, bucket: str
) -> None:
    with _system(trained_registry, tmp_path, bucket, "0.2") as system:
        ids = _send(system, COUNT)
        wait_until(lambda: sorted(_logged(bucket)) == sorted(ids), "every answer uploaded")

        labels = [{"request_id": i, "label": 60.0} for i in ids]
        code, taken = call_json(f"{system.router_url}/feedback", "POST", labels, system.token)
        assert code == 200 and taken["quality"]["stable"]["1"]["labels"] == COUNT, taken

        exported = tmp_path / "predictions.csv"
        done = run_mlcanary("predictions", "export", str(exported), "--log", bucket,
                            state=system.state)  # fmt: skip
        assert done.returncode == 0, done.stderr
        with exported.open() as handle:
            assert sorted(row["request_id"] for row in csv.DictReader(handle)) == sorted(ids)

        spool = system.state / "predictions-spool"
        assert len([path for path in spool.iterdir() if path.is_dir()]) == 1
        system.processes[1].send_signal(signal.SIGTERM)
        assert system.processes[1].wait(timeout=60) == 0
        assert not any(spool.iterdir())  # all uploaded: the stopped router's folder is gone
        assert sorted(_logged(bucket)) == sorted(ids)  # each record once


def test_what_a_killed_router_spooled_is_uploaded_by_the_next(
    trained_registry: TrainedRegistry, tmp_path: Path, bucket: str
) -> None:
    """Uploads every hour: the records stay in the spool (written, fsynced) until the router is
    SIGKILLed; the next router on the same spool finds the dead one's folder (its lock is free)
    and uploads it, once."""
    with _system(trained_registry, tmp_path, bucket, "3600") as system:
        ids = _send(system, COUNT)
        spool = system.state / "predictions-spool"

        def spooled() -> int:
            return sum(len(path.read_bytes().splitlines()) for path in spool.glob("*/*/*.jsonl"))

        wait_until(lambda: spooled() == COUNT, "every answer written to the spool")
        assert _logged(bucket) == []  # not uploaded yet (the first upload found nothing)
        system.processes[1].send_signal(signal.SIGKILL)
        system.processes[1].wait(timeout=60)

        system.restart_router()
        wait_until(lambda: sorted(_logged(bucket)) == sorted(ids), "the dead router's records")
        assert len([path for path in spool.iterdir() if path.is_dir()]) == 1  # the new one's
        more = _send(system, 3)
        system.processes[1].send_signal(signal.SIGTERM)
        assert system.processes[1].wait(timeout=60) == 0
        assert sorted(_logged(bucket)) == sorted(ids + more)


def _record(request_id: str, at: float) -> bytes:
    record = {"request_id": request_id, "time": at, "variant": "stable", "version": "1",
              "inputs": {}, "answer": {"predictions": [1]}}  # fmt: skip
    return json.dumps(record).encode()


def test_an_upload_repeated_after_a_crash_writes_the_same_part_not_a_copy(tmp_path: Path) -> None:
    """The part is named by its offset: with the record of what was uploaded lost (a crash
    between the part and that record), the next upload rewrites the same part, longer, and
    each record is read once. A file whose hour is over goes once uploaded; a torn last line
    waits for its end."""
    store = f"file://{tmp_path / 'store'}"
    uploader = SpoolUploader(tmp_path / "spool", "instance-1", store)
    now = time.time()
    current = file_for(uploader.folder, "instance-1", now)
    current.parent.mkdir(parents=True)
    current.write_bytes(_record("a", now) + b"\n" + _record("b", now) + b"\n")
    uploader.upload()
    current.with_suffix(".uploaded").unlink()  # the crash
    with current.open("ab") as handle:
        handle.write(_record("c", now) + b"\n" + _record("d", now)[:10])  # d: torn so far
    uploader.upload()
    assert sorted(r.request_id for r in read_predictions(store)) == ["a", "b", "c"]
    parts = sorted(path.name for path in (tmp_path / "store").glob("*/*.jsonl"))
    assert parts == [f"{current.stem}-{0:012d}.jsonl"]

    old_hour = now - 7200
    old = file_for(uploader.folder, "instance-1", old_hour)
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_bytes(_record("e", old_hour) + b"\n")
    uploader.upload()
    assert not old.exists() and current.exists()  # over and uploaded; still written to
    assert sorted(r.request_id for r in read_predictions(store)) == ["a", "b", "c", "e"]
    uploader.close()
    assert not uploader.folder.exists()


def test_a_log_url_this_machine_cannot_use_is_refused_at_start(tmp_path: Path) -> None:
    """A scheme fsspec does not know, or whose package is not installed, is said before any
    server starts (exit 2, the option named), for the router, the controller and the export."""
    routing = tmp_path / "routing.yaml"
    routing.write_text("stable: {url: 'http://127.0.0.1:1', version: '1'}\n")
    cases = {
        ("router", "--config", str(routing), "--port", "0", "--prediction-log", "nosuch://b/p"):
            "prediction_log: Value error, nosuch://b/p: no fsspec filesystem for nosuch://",
        ("controller", "--port", "0", "--prediction-log", "oci://bucket/predictions"):
            "--prediction-log: oci://bucket/predictions: ",
        ("predictions", "export", str(tmp_path / "out.csv"), "--log", "oci://bucket/p"):
            "--log: oci://bucket/p: ",
    }  # fmt: skip
    for argv, said in cases.items():
        done = run_mlcanary(*argv, state=tmp_path)
        assert done.returncode == 2 and said in done.stderr, (argv, done.stderr)
        assert "Traceback" not in done.stderr
