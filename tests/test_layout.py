"""The import rules of docs/architecture.md, read from the source.

Each part imports only what it may, and no module reaches itself through a chain of imports:
every import counts, those under `TYPE_CHECKING` and inside functions too, because a circle a
type checker or a late import hides is still two modules that cannot be read apart.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PARTS = (
    "mlcanary",
    "orchestration",
    "controller",
    "router",
    "model_server",
    "training",
    "contracts",
    "common",
)
MAY_IMPORT: dict[str, tuple[str, ...]] = {
    "mlcanary": PARTS,  # the command dispatches to every part
    "orchestration": ("common", "contracts", "controller", "training"),
    "controller": ("common", "contracts", "training.registry"),
    "router": ("common", "contracts"),
    "model_server": ("common", "contracts"),
    "training": ("common",),
    # What crosses between parts depends on nothing of the parts (only on common's files).
    "contracts": ("common",),
    "common": (),
}


def imported_names(path: Path, module: str) -> Iterator[str]:
    """Yield every module name `path` imports anywhere (functions and TYPE_CHECKING included).

    `from a import b` yields `a.b` (b may be a module) and `a`; relative imports are resolved
    against `module`, the dotted name of `path`.
    """
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def module_files(root: Path, parts: tuple[str, ...]) -> dict[str, Path]:
    """Map each dotted module name of `parts` under `root` to its file."""
    found = {}
    for part in parts:
        for path in sorted((root / part).rglob("*.py")):
            dotted = path.relative_to(root).with_suffix("").parts
            found[".".join(dotted[:-1] if dotted[-1] == "__init__" else dotted)] = path
    return found


def import_graph(root: Path, parts: tuple[str, ...]) -> dict[str, set[str]]:
    """Map each of our modules to the modules of ours it imports (a package means its __init__)."""
    files = module_files(root, parts)
    return {
        module: {name for name in imported_names(path, module) if name in files} - {module}
        for module, path in files.items()
    }


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Return the strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def imports_of(part: str) -> dict[str, list[str]]:
    """Map each module of another part that `part` imports to the files that do."""
    found: dict[str, list[str]] = {}
    for module, path in module_files(ROOT, (part,)).items():
        for name in set(imported_names(path, module)):
            top = name.split(".")[0]
            if top in PARTS and top != part and (ROOT / top).is_dir():
                found.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("part", PARTS)
def test_a_part_imports_only_what_the_design_allows(part: str) -> None:
    """Each part's imports of other parts are within its rule (the controller never the router)."""
    allowed = MAY_IMPORT[part]
    refused = {
        name: files
        for name, files in imports_of(part).items()
        if not any(
            name == rule or name.startswith(f"{rule}.") or rule.startswith(f"{name}.")
            for rule in allowed
        )
    }
    assert not refused, f"{part} may import only {allowed}; it imports {refused}"


def test_no_module_imports_itself_through_others() -> None:
    """No import circle anywhere in our packages, type-only and function-level imports included."""
    found = circles(import_graph(ROOT, PARTS))
    assert not found, f"import circles: {found}"


def test_a_circle_is_found_even_behind_type_checking_and_inside_functions(tmp_path: Path) -> None:
    """The circle check fails on a planted circle: a TYPE_CHECKING import and a deferred one."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub.b import B\n"
    )
    (package / "sub" / "b.py").write_text("def f():\n    from .. import c\n")
    (package / "c.py").write_text("import pkg.a\n")
    (package / "d.py").write_text("from pkg import c\n")  # imports into the circle, not part of it
    assert circles(import_graph(tmp_path, ("pkg",))) == [["pkg.a", "pkg.c", "pkg.sub.b"]]
    (package / "c.py").write_text("")
    assert circles(import_graph(tmp_path, ("pkg",))) == []


def test_the_rules_cover_every_part_and_the_reader_sees_imports() -> None:
    """Every package is ruled on, and the reader finds imports (a broken reader passes all)."""
    packages = {path.parent.name for path in ROOT.glob("*/__init__.py")} - {"tests", "bench"}
    assert packages == set(PARTS)
    assert "contracts.routing" in imports_of("controller")
    assert "common.settings" in imports_of("router")
    assert import_graph(ROOT, PARTS)["router.telemetry.metrics"] >= {"contracts.metrics"}
