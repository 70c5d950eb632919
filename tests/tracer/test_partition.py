"""Segmenting without deadlock (seed point 4): expected partitions by node name."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from tests.tracer.conftest import max_rel_diff


def _graph(kind: str) -> Any:
    """Small named graphs over one placeholder ``x``."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="x")
        if kind == "chain":
            a = tf.tanh(x, name="a")
            b = tf.sin(a, name="b")
            tf.exp(b, name="c")
        elif kind in ("tempt", "diamond"):
            a = tf.tanh(x, name="a")
            mid = tf.sin(a, name="cpu")
            tf.add(a, mid, name="b")
        elif kind == "diamond4":
            a = tf.tanh(x, name="a")
            b = tf.sin(a, name="b")
            c = tf.cos(a, name="cpu")
            tf.add(b, c, name="d")
        elif kind == "parallel":
            a2 = tf.sin(tf.tanh(x, name="a1"), name="a2")
            b2 = tf.cos(tf.exp(x, name="b1"), name="b2")
            tf.add(a2, b2, name="out")
        elif kind == "control":
            a = tf.tanh(x, name="a")
            with tf.control_dependencies([a]):
                cpu = tf.identity(x, name="cpu")
            tf.add(tf.sin(a, name="a2"), cpu, name="b")
    return graph.as_graph_def()


@pytest.mark.parametrize(
    ("kind", "candidates", "expected"),
    [
        ("chain", {"a", "b", "c"}, [["a", "b", "c"]]),
        ("tempt", {"a", "b"}, [["a"], ["b"]]),
        ("diamond", {"a", "cpu", "b"}, [["a", "cpu", "b"]]),
        ("diamond4", {"a", "b", "d"}, [["a", "b"], ["d"]]),
        ("parallel", {"a1", "a2", "b1", "b2"}, [["a1", "a2"], ["b1", "b2"]]),
        ("parallel", {"a1", "a2", "b1", "b2", "out"}, [["a1", "a2", "b1", "b2", "out"]]),
        ("control", {"a", "a2", "b"}, [["a", "a2"], ["b"]]),
    ],
)
def test_expected_partitions(kind: str, candidates: set[str], expected: list[list[str]]) -> None:
    from kiln_worker.tracer.graphs import NodeGraph
    from kiln_worker.tracer.partition import (
        contracted_is_acyclic,
        fuse_partitions,
        propose_partitions,
    )

    graph = NodeGraph(_graph(kind))
    groups = propose_partitions(graph, candidates)
    assert [sorted(g) for g in groups] == [sorted(g) for g in expected]
    partitions = fuse_partitions(graph, groups, candidates, [])
    assert [p.name for p in partitions] == [f"kiln_subgraph_{i}" for i in range(len(expected))]
    assert contracted_is_acyclic(graph, partitions)


def test_contracting_the_tempting_pair_would_be_a_cycle() -> None:
    """The check itself can fail: merging A and B across the CPU op is detected as cyclic."""
    from kiln_worker.tracer.graphs import NodeGraph
    from kiln_worker.tracer.partition import Partition, contracted_is_acyclic

    graph = NodeGraph(_graph("tempt"))
    assert not contracted_is_acyclic(graph, [Partition("bad", ["a", "b"])])


def test_trace_keeps_tempting_graph_acyclic_and_correct(rng: np.random.Generator) -> None:
    import tensorflow as tf

    import kiln_worker
    from kiln_worker.tracer.graphs import NodeGraph

    def func(x):  # type: ignore[no-untyped-def]
        a = tf.tanh(tf.matmul(x, tf.ones([4, 4])), name="A")
        cpu = tf.sin(a, name="CPU")
        return tf.nn.relu(tf.add(a, cpu), name="B")

    x = rng.normal(size=(2, 4)).astype("float32")
    traced = kiln_worker.trace(func, x, subgraph_builder_function=lambda n: n.name != "CPU")
    owner = {op: s["name"] for s in traced.report["subgraphs"] for op in s["ops"]}
    assert "A" in owner and "B" in owner
    assert owner["A"] != owner["B"]
    assert "CPU" not in owner
    assert max_rel_diff(func(x), traced(x)) < 1e-6
    assert NodeGraph(_rewritten(traced))  # the rewritten graph sorts topologically (a DAG)


def _rewritten(model: Any) -> Any:
    """The graph of the model's serving function (NodeGraph raises if it has a cycle)."""
    return model._serve.get_concrete_function().graph.as_graph_def()
