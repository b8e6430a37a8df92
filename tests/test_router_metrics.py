"""The router's lock-free metric families render as prometheus_client's do; predictions parse."""

from __future__ import annotations

import json
import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from router.telemetry.plainmetrics import PlainCounter, PlainHistogram
from router.telemetry.predictions import predictions_of

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
    counter = PlainCounter("c", "doc", ["variant", "code"], ours)
    histogram = PlainHistogram("h", "doc", ["variant"], BUCKETS, ours)
    reference_counter = Counter("c", "doc", ["variant", "code"], registry=theirs)
    reference_histogram = Histogram("h", "doc", ["variant"], buckets=BUCKETS, registry=theirs)
    for index, value in enumerate(VALUES):
        variant = "stable" if index % 3 else "canary"
        counter.labels(variant, "200").inc()
        reference_counter.labels(variant, "200").inc()
        histogram.labels(variant).observe(value)
        reference_histogram.labels(variant).observe(value)
    counter.labels("canary", "503")
    reference_counter.labels("canary", "503")
    assert samples(ours) == samples(theirs)
    assert ("h_bucket", (("le", "0.5"), ("variant", "stable")), 2.0) in samples(ours)  # 0.5, -4


def test_wrong_number_of_labels_is_refused() -> None:
    registry = CollectorRegistry()
    counter = PlainCounter("c", "doc", ["variant", "code"], registry)
    histogram = PlainHistogram("h", "doc", ["variant"], BUCKETS, registry)
    with pytest.raises(ValueError, match="takes labels"):
        counter.labels("stable")
    with pytest.raises(ValueError, match="takes labels"):
        histogram.labels("stable", "1")


def test_a_name_taken_twice_is_refused_by_the_registry() -> None:
    registry = CollectorRegistry()
    PlainCounter("c", "doc", [], registry)
    with pytest.raises(ValueError, match="Duplicated"):
        PlainCounter("c", "doc", [], registry)


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
