"""The router's lock-free metric families render as prometheus_client's do, added up over the
processes sharing their folder; predictions parse."""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from router.telemetry.plainmetrics import PlainCounter, PlainGauge, PlainHistogram, SharedMetrics
from router.telemetry.predictions import predictions_of
from router.telemetry.sharedvalues import ValueStore

ROOT = Path(__file__).resolve().parent.parent

BUCKETS = (0.5, 1, 2.5)
VALUES = (0.1, 0.5, 0.50001, 1, 2.4, 2.5, 3, 1e9, -4)


def samples(registry: CollectorRegistry) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    """Every sample of a registry but `_created` ones, as comparable tuples."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items())), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def test_plain_families_render_the_same_samples_as_prometheus_client() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    shared = SharedMetrics(ValueStore())
    counter = PlainCounter(shared, "c", "doc", ["variant", "code"])
    histogram = PlainHistogram(shared, "h", "doc", ["variant"], BUCKETS)
    gauge = PlainGauge(shared, "g", "doc", ["variant"], "max")
    shared.register(ours)
    reference_counter = Counter("c", "doc", ["variant", "code"], registry=theirs)
    reference_histogram = Histogram("h", "doc", ["variant"], buckets=BUCKETS, registry=theirs)
    reference_gauge = Gauge("g", "doc", ["variant"], registry=theirs)
    for index, value in enumerate(VALUES):
        variant = "stable" if index % 3 else "canary"
        counter.labels(variant, "200").inc()
        reference_counter.labels(variant, "200").inc()
        histogram.labels(variant).observe(value)
        reference_histogram.labels(variant).observe(value)
        gauge.labels(variant).set(value)
        reference_gauge.labels(variant).set(value)
    counter.labels("canary", "503")
    reference_counter.labels("canary", "503")
    assert samples(ours) == samples(theirs)
    assert ("h_bucket", (("le", "0.5"), ("variant", "stable")), 2.0) in samples(ours)  # 0.5, -4


def test_wrong_number_of_labels_is_refused() -> None:
    shared = SharedMetrics(ValueStore())
    counter = PlainCounter(shared, "c", "doc", ["variant", "code"])
    histogram = PlainHistogram(shared, "h", "doc", ["variant"], BUCKETS)
    with pytest.raises(ValueError, match="takes labels"):
        counter.labels("stable")
    with pytest.raises(ValueError, match="takes labels"):
        histogram.labels("stable", "1")


def test_a_name_taken_twice_is_refused() -> None:
    shared = SharedMetrics(ValueStore())
    PlainCounter(shared, "c", "doc", [])
    with pytest.raises(ValueError, match="declared twice"):
        PlainCounter(shared, "c", "doc", [])
    registry = CollectorRegistry()
    Counter("c", "doc", registry=registry)
    with pytest.raises(ValueError, match="Duplicated"):
        shared.register(registry)


PROCESS = """
import sys
from pathlib import Path
from router.telemetry.plainmetrics import PlainCounter, PlainGauge, PlainHistogram, SharedMetrics
from router.telemetry.sharedvalues import ValueStore

shared = SharedMetrics(ValueStore(Path(sys.argv[1])))
counter = PlainCounter(shared, "c", "doc", ["variant"])
gauge = PlainGauge(shared, "g", "doc", [], "max")
histogram = PlainHistogram(shared, "h", "doc", [], (1, 2))
for _ in range(int(sys.argv[2])):
    counter.labels("stable").inc()
    histogram.observe(1.5)
gauge.set(float(sys.argv[2]))
print("counted", flush=True)
sys.stdin.readline()
"""


def test_processes_sharing_a_folder_add_up_and_those_that_died_still_count(
    tmp_path: Path,
) -> None:
    """Two other processes count 3 and 5, this one 1: a scrape of this one shows 9. Once the
    second has exited, its 5 are still counted (no counter goes back), but its gauge is gone."""
    with contextlib.ExitStack() as stack:
        others = [
            stack.enter_context(
                subprocess.Popen(
                    [sys.executable, "-c", PROCESS, str(tmp_path), str(count)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    cwd=ROOT,
                )
            )
            for count in (3, 5)
        ]
        for other in others:
            stack.callback(other.kill)
        for other in others:
            assert other.stdout is not None and other.stdout.readline() == "counted\n"
        registry = CollectorRegistry()
        shared = SharedMetrics(ValueStore(tmp_path))
        PlainCounter(shared, "c", "doc", ["variant"]).labels("stable").inc()
        PlainGauge(shared, "g", "doc", [], "max").set(1)
        PlainHistogram(shared, "h", "doc", [], (1, 2)).observe(0.5)
        shared.register(registry)
        assert registry.get_sample_value("c_total", {"variant": "stable"}) == 9
        assert registry.get_sample_value("g") == 5
        assert registry.get_sample_value("h_bucket", {"le": "1.0"}) == 1
        assert registry.get_sample_value("h_bucket", {"le": "2.0"}) == 9
        assert registry.get_sample_value("h_sum") == 0.5 + 8 * 1.5
        others[1].communicate("\n", timeout=30)
        assert registry.get_sample_value("c_total", {"variant": "stable"}) == 9
        assert registry.get_sample_value("g") == 3


def test_a_histogram_cut_anew_shows_only_its_new_buckets() -> None:
    """New bounds for a child start it afresh; a child no longer configured is not shown."""
    registry = CollectorRegistry()
    shared = SharedMetrics(ValueStore())
    histogram = PlainHistogram(shared, "h", "doc", ["output"], ())
    shared.register(registry)
    histogram.labels_with_bounds(("a",), (1.0,)).observe(0.5)
    histogram.labels_with_bounds(("b",), (1.0,)).observe(0.5)
    histogram.labels_with_bounds(("a",), (2.0, 3.0)).observe(2.5)
    histogram.remove_other_than({("a",)})
    assert registry.get_sample_value("h_bucket", {"output": "a", "le": "1.0"}) is None
    assert registry.get_sample_value("h_bucket", {"output": "a", "le": "3.0"}) == 1
    assert registry.get_sample_value("h_count", {"output": "b"}) is None


@pytest.mark.parametrize(
    "body",
    [
        b'{"predictions": [42.0]}',
        b'{"predictions": [1, -2.5e3, 0.000001, 7]}',
        b'{"predictions": [NaN, Infinity, -Infinity]}',
        b'{"predictions": []}',
        b'{"predictions": [true]}',
        b'{"predictions": [1, null]}',
        b'{"predictions": ["a", 1]}',
        b'{"predictions": [[1, 2]]}',
        b'{"predictions": [{"a": 1}]}',
        b'{"predictions": [1_0]}',
        b'{"predictions": [1,]}',
        b'{"predictions": {"a": [1]}}',
        b'{"other": [1]}',
        b"[1, 2]",
        b"not json",
    ],
)
def test_predictions_read_without_the_json_parser_agree_with_it(body: bytes) -> None:
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    listed = document.get("predictions") if isinstance(document, dict) else None
    kept = [v for v in listed if v is not None] if isinstance(listed, list) else []  # nulls: none
    numeric = bool(kept) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in kept
    )
    expected = [float(v) for v in kept] if numeric else None
    got = predictions_of(body)
    if expected is None:
        assert got is None
    else:
        assert got is not None
        assert len(got) == len(expected)
        assert all(
            a == b or (math.isnan(a) and math.isnan(b)) for a, b in zip(got, expected, strict=True)
        )
