"""The routing file: validation that names the field, atomic writes, and hot reload."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from contracts.routing import (
    RoutingConfig,
    RoutingFileError,
    parse_routing,
    read_routing_file,
    write_routing_file,
)
from router.routing.choosing import choose_variant, forced_variant, sticky_bucket
from router.routing.watcher import RoutingFileWatcher, RoutingTable

GOOD = """\
model: StudentExamPredictor
stable: {url: "http://127.0.0.1:5101", version: "1"}
canary: {url: "http://127.0.0.1:5102", version: "2", weight: 10}
sticky: {header: X-User-Id}
shadow: {percent: 0}
"""


def _config(weight: float = 10, sticky: bool = False) -> RoutingConfig:
    document = {
        "model": "StudentExamPredictor",
        "stable": {"url": "http://127.0.0.1:5101", "version": "1"},
        "canary": {"url": "http://127.0.0.1:5102", "version": "2", "weight": weight},
    }
    if sticky:
        document["sticky"] = {"header": "X-User-Id"}
    return RoutingConfig.model_validate(document)


def test_the_design_example_is_valid() -> None:
    """The file shown in docs/architecture.md loads as written."""
    architecture = (Path(__file__).parent.parent / "docs" / "architecture.md").read_text()
    shown = architecture.split("```yaml\n", 1)[1].split("```", 1)[0]
    for text in (shown, GOOD):
        config = parse_routing(text.encode(), "routing.yaml")
        assert config.canary is not None and config.canary.weight == 10
        assert config.sticky is not None and config.sticky.header == "X-User-Id"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "the file is empty"),
        ("model: [unclosed", "not valid YAML"),
        ("- just\n- a list\n", "must be a mapping"),
        (
            GOOD.replace("weight: 10", "weight: 140"),
            "canary.weight: Input should be less than or equal to 100",
        ),
        (
            GOOD.replace("weight: 10", "weight: 10.05"),
            "canary.weight: Value error, must be a multiple of 0.1",
        ),
        (GOOD + "colour: blue\n", "colour: Extra inputs are not permitted"),
        (GOOD.replace('url: "http://127.0.0.1:5101", ', ""), "stable.url: Field required"),
        (
            GOOD.replace("http://127.0.0.1:5102", "ftp://x"),
            "canary.url: Value error, must be an http(s) URL",
        ),
        (
            GOOD.replace("X-User-Id", '"X User"'),
            "sticky.header: Value error, must be a valid HTTP header",
        ),
        (GOOD[: len(GOOD) // 2], "not valid YAML"),
    ],
    ids=[
        "empty",
        "bad-yaml",
        "list",
        "weight-140",
        "weight-step",
        "unknown-key",
        "no-url",
        "scheme",
        "header",
        "truncated",
    ],
)
def test_an_invalid_file_names_the_field_and_the_problem(text: str, expected: str) -> None:
    """Each invalid file is refused with the file, the field and the reason in the message."""
    with pytest.raises(RoutingFileError) as raised:
        parse_routing(text.encode(), "config/routing.yaml")
    assert str(raised.value).startswith("config/routing.yaml: ")
    assert expected in str(raised.value)


def test_writes_are_atomic_and_round_trip(tmp_path: Path) -> None:
    """A written file reads back equal, with no temp file left behind."""
    path = tmp_path / "routing.yaml"
    version = write_routing_file(path, _config(25))
    config, read_version = read_routing_file(path)
    assert config == _config(25)
    assert read_version == version
    assert [p.name for p in tmp_path.iterdir()] == ["routing.yaml"]


def test_weight_ten_sends_ten_percent_to_the_canary() -> None:
    """Over 20,000 requests at weight 10 the canary share is within one point of 10%."""
    rng = random.Random(7)
    config = _config(10)
    picks = [choose_variant(config, {}, rng, {}) for _ in range(20_000)]
    share = picks.count("canary") / len(picks) * 100
    assert 9.0 <= share <= 11.0


def test_sticky_keys_only_ever_move_from_stable_to_canary() -> None:
    """As the weight grows 0→100 a key that reached the canary never goes back to stable."""
    rng = random.Random(0)
    keys = [f"user-{i}" for i in range(3_000)]
    on_canary: set[str] = set()
    for tenths in [*range(0, 1000, 7), 1000]:
        config = _config(tenths / 10, sticky=True)
        now = {k for k in keys if choose_variant(config, {"X-User-Id": k}, rng, {}) == "canary"}
        assert on_canary <= now
        on_canary = now
    assert len(on_canary) == len(keys)


PINNED_BUCKETS = {
    "user-0": 1073, "user-1": 3768, "user-42": 598, "alice": 4729, "bob": 9842,
    "Ünïcode-key": 1317, "": 9876,
}  # fmt: skip
"""Buckets of fixed keys: a release that moved any key would move users between variants."""


def test_sticky_buckets_are_pinned_in_every_process() -> None:
    """Fixed keys land in fixed buckets, here and in processes with other hash seeds."""
    keys = list(PINNED_BUCKETS)
    code = (
        "import sys; from router.routing.choosing import sticky_bucket; "
        "print(','.join(str(sticky_bucket(k)) for k in sys.argv[1:]))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code, *keys],
            env=dict(os.environ, PYTHONHASHSEED=seed),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert outputs == {",".join(str(bucket) for bucket in PINNED_BUCKETS.values())}
    assert {key: sticky_bucket(key) for key in keys} == PINNED_BUCKETS


def test_force_header_and_ejection() -> None:
    """A force is honoured only when the file allows it, with the token, and at weight 0 only
    when the file says so; an ejected variant's share goes to the other."""
    rng = random.Random(0)
    config = _config(50).model_copy(update={"force_header": True})
    token = {"X-Force-Token": "sesame"}
    assert forced_variant(config, {"X-Force-Variant": "canary", **token}, "sesame") == "canary"
    assert forced_variant(config, {"X-Force-Variant": "STABLE", **token}, "sesame") == "stable"
    assert forced_variant(config, {"X-Force-Variant": "other", **token}, "sesame") is None
    assert forced_variant(config, {"X-Force-Variant": "canary"}, "sesame") == "token"
    assert forced_variant(config, {"X-Force-Variant": "canary", **token}, None) == "token"
    wrong = {"X-Force-Variant": "canary", "X-Force-Token": "sesamf"}
    assert forced_variant(config, wrong, "sesame") == "token"
    at_zero = config.model_copy(
        update={"canary": config.canary.model_copy(update={"weight": 0.0})}  # type: ignore[union-attr]
    )
    asked = {"X-Force-Variant": "canary", **token}
    assert forced_variant(at_zero, asked, "sesame") == "weight_zero"
    allowed = at_zero.model_copy(update={"force_zero_weight": True})
    assert forced_variant(allowed, asked, "sesame") == "canary"
    off = at_zero.model_copy(update={"force_header": False})
    assert forced_variant(off, asked, "sesame") == "disabled"
    assert (
        RoutingConfig.model_validate(
            {"model": "m", "stable": {"url": "http://a", "version": "1"}}
        ).force_header
        is False
    )  # off unless the operator turns it on
    assert {choose_variant(config, {}, rng, {"canary": False}) for _ in range(200)} == {"stable"}
    assert {choose_variant(config, {}, rng, {"stable": False}) for _ in range(200)} == {"canary"}
    assert choose_variant(at_zero, {}, rng, {"stable": False}) == "stable"


def _watch(path: Path) -> RoutingFileWatcher:
    config, version = read_routing_file(path)
    outcomes: list[tuple[bool, str]] = []
    watcher = RoutingFileWatcher(
        path, RoutingTable(config, version), lambda ok, why: outcomes.append((ok, why))
    )
    watcher.outcomes = outcomes  # type: ignore[attr-defined]
    watcher.check()
    return watcher


def test_reload_follows_in_place_rename_and_symlink_swaps(tmp_path: Path) -> None:
    """Written in place, renamed over, or swapped behind a `..data` symlink: all are seen."""
    path = tmp_path / "routing.yaml"
    write_routing_file(path, _config(10))
    watcher = _watch(path)
    path.write_text(GOOD.replace("weight: 10", "weight: 20"))
    assert watcher.check() and watcher.table.current.canary_weight == 20
    write_routing_file(path, _config(30))
    assert watcher.check() and watcher.table.current.canary_weight == 30

    mounted = tmp_path / "configmap"
    mounted.mkdir()
    for name, weight in (("..2026_1", 40), ("..2026_2", 50)):
        (mounted / name).mkdir()
        write_routing_file(mounted / name / "routing.yaml", _config(weight))
    (mounted / "..data").symlink_to("..2026_1")
    (mounted / "routing.yaml").symlink_to("..data/routing.yaml")
    kube = _watch(mounted / "routing.yaml")
    assert kube.table.current.canary_weight == 40
    (mounted / "..data_tmp").symlink_to("..2026_2")
    os.replace(mounted / "..data_tmp", mounted / "..data")  # how kubelet swaps a ConfigMap
    assert kube.check() and kube.table.current.canary_weight == 50


def test_an_invalid_file_changes_nothing_and_is_reported(tmp_path: Path) -> None:
    """Invalid content keeps the last good table and reports why; a fix applies again."""
    path = tmp_path / "routing.yaml"
    write_routing_file(path, _config(10))
    watcher = _watch(path)
    before = watcher.table.version
    for bad in ("", "weight: [", GOOD.replace("weight: 10", "weight: 140"), GOOD[:40]):
        path.write_text(bad)
        assert not watcher.check()
        assert watcher.table.version == before
        assert watcher.table.current.canary_weight == 10
        assert watcher.table.last_error
    write_routing_file(path, _config(0))
    assert watcher.check()
    assert watcher.table.current.canary_weight == 0 and watcher.table.last_error is None
    outcomes = watcher.outcomes  # type: ignore[attr-defined]
    assert [ok for ok, _ in outcomes] == [False, False, False, False, True]


def test_the_committed_example_is_valid() -> None:
    """config/routing.yaml, the file the router follows by default, loads as it is."""
    config, _ = read_routing_file(Path(__file__).parent.parent / "config" / "routing.yaml")
    assert config.canary is not None and config.canary.weight == 10
