"""No two kiln_worker or kiln_service modules import each other, not even for types only.

Counted: imports at module level, including those under ``if TYPE_CHECKING:`` (a type-only
cycle is still a cycle in the design: a type two modules share lives in a third). Not counted:
imports inside functions, which load an optional or heavy piece only when used.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def module_imports(src: Path, package: str) -> dict[str, set[str]]:
    """Each module of ``package`` (under ``src``) → the modules of it imported at module level."""
    files = {".".join(f.relative_to(src).with_suffix("").parts).removesuffix(".__init__"): f
             for f in (src / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        body = ast.parse(path.read_text()).body
        nodes = body + [n for block in body if isinstance(block, ast.If) for n in block.body]
        found: set[str] = set()
        for node in nodes:
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        graph[name] = {m for m in found & files.keys() - {name}
                       if files[m].name != "__init__.py"}  # re-exports, not dependencies
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The modules that reach themselves again, grouped by strongly connected component."""
    reach = {m: set(graph[m]) for m in graph}
    changed = True
    while changed:
        changed = False
        for seen in reach.values():
            more = set().union(*(reach[n] for n in seen)) - seen
            if more:
                seen |= more
                changed = True
    looped = sorted(m for m in graph if m in reach[m])
    groups = {frozenset(n for n in looped if n in reach[m] and m in reach[n]) for m in looped}
    return sorted(sorted(g) for g in groups)


def test_the_cycle_finder_sees_a_type_only_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize(("folder", "package"), [("worker", "kiln_worker"),
                                                 ("service", "kiln_service")])
def test_no_import_cycles(folder: str, package: str) -> None:
    graph = module_imports(REPO / folder / "src", package)
    assert len(graph) > 20 and sum(map(len, graph.values())) > 50  # the modules were read
    assert cycles(graph) == []
