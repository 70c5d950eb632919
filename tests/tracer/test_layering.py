"""The tracer's modules import one way only: no two of them import each other, even lazily."""

from __future__ import annotations

import ast
from pathlib import Path

import kiln_worker

TRACER = Path(kiln_worker.__file__).parent / "tracer"
PREFIX = "kiln_worker.tracer."


def _imports() -> dict[str, set[str]]:
    """Module name → the tracer modules it imports (at module level or inside functions)."""
    graph: dict[str, set[str]] = {}
    for path in TRACER.rglob("*.py"):
        name = ".".join(path.relative_to(TRACER).with_suffix("").parts).removesuffix("__init__")
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.module == PREFIX.rstrip("."):  # from kiln_worker.tracer import passes
                deps.update(alias.name for alias in node.names)
            elif (node.module or "").startswith(PREFIX):
                deps.add(str(node.module)[len(PREFIX) :])
        graph[name.rstrip(".")] = deps
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (found := visit(dep, [*path, dep])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_tracer_import_graph_has_no_cycle() -> None:
    graph = _imports()
    assert {"api", "graphs", "passes", "verify", "rewrite", "wrap"} <= set(graph)
    assert "passes" in graph["api"]  # lazy and package-relative imports are seen too
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_cycle_check_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_graph_helpers_import_no_pass() -> None:
    assert _imports()["graphs"] == set()
