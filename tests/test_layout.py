"""The import rules of DESIGN §1, read from the source: each part imports only what it may."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("mlcanary", "orchestration", "controller", "router", "model_server", "training", "common")
MAY_IMPORT: dict[str, tuple[str, ...]] = {
    "mlcanary": PARTS,  # the command dispatches to every part
    "orchestration": ("common", "controller", "training", "router.config"),
    "controller": (
        "common",
        "training.registry",
        # the router's contracts: the routing file, its metric names, its prediction shapes
        "router.config",
        "router.metrics",
        "router.predictions",
    ),
    "router": ("common",),
    "model_server": ("common",),
    "training": ("common",),
    "common": (),
}


def imports_of(part: str) -> dict[str, list[str]]:
    """Map each module of ours that `part` imports (absolute imports) to the files that do."""
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / part).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                if name.split(".")[0] in PARTS and name.split(".")[0] != part:
                    found.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("part", PARTS)
def test_a_part_imports_only_what_design_allows(part: str) -> None:
    allowed = MAY_IMPORT[part]
    refused = {
        name: files
        for name, files in imports_of(part).items()
        if not any(name == rule or name.startswith(f"{rule}.") for rule in allowed)
    }
    assert not refused, f"{part} may import only {allowed}; it imports {refused}"


def test_the_rules_cover_every_part_and_the_reader_sees_imports() -> None:
    """Every package is ruled on, and the reader finds imports (a broken reader passes all)."""
    packages = {path.parent.name for path in ROOT.glob("*/__init__.py")} - {"tests", "bench"}
    assert packages == set(PARTS)
    assert "router.config" in imports_of("controller")
    assert "common.settings" in imports_of("router")
