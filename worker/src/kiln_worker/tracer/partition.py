"""Pass ``partition``: group candidate nodes into subgraphs that keep the graph acyclic.

A subgraph is contracted into one call node later, so two clusters may merge only if no *other*
path connects them: a path that leaves a subgraph through CPU ops and comes back into it would
make the call wait for itself (the "deadlock" of the seed). Clusters grow in topological order
by union-find; the reachability check only visits nodes up to the newest node's topological
index, since every clustered node precedes it. Iteration follows graph order, so results and
names (``kiln_subgraph_0..n``) are deterministic.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from kiln_worker.tracer.errors import TraceError
from kiln_worker.tracer.graphs import NodeGraph, parse_input, tensor_name
from kiln_worker.tracer.placement import SUBSTANTIAL_OPS, TRIVIAL_OPS, Placement

logger = logging.getLogger(__name__)
#: Why automatic placement leaves a trivial subgraph's nodes on CPU.
TRIVIAL_REASON = "trivial subgraph (one cheap op, or data movement only): not worth a call"


@dataclass
class Partition:
    """One accelerator subgraph and its boundary."""

    name: str
    nodes: list[str]
    constants: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    control_inputs: list[str] = field(default_factory=list)


class _Clusters:
    def __init__(self, graph: NodeGraph) -> None:
        self.graph = graph
        self.parent: dict[str, str] = {}
        self.members: dict[str, list[str]] = {}

    def find(self, name: str) -> str:
        root = name
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[name] != root:
            self.parent[name], name = root, self.parent[name]
        return root

    def add(self, name: str) -> None:
        self.parent[name] = name
        self.members[name] = [name]

    def union(self, a: str, b: str) -> None:
        keep, gone = (a, b) if self.graph.index[a] <= self.graph.index[b] else (b, a)
        self.parent[gone] = keep
        self.members[keep].extend(self.members.pop(gone))

    def _root(self, name: str) -> str:
        return self.find(name) if name in self.parent else name


def propose_partitions(graph: NodeGraph, candidates: set[str]) -> list[list[str]]:
    """Group candidate (non-constant) nodes into clusters that keep the graph acyclic.

    Returns:
        Node-name lists in topological order, one per cluster, ordered by first node.
    """
    clusters = _Clusters(graph)
    for name in graph.order:
        if name not in candidates or graph.nodes[name].op == "Const":
            continue
        clusters.add(name)
        for producer in graph.data_preds[name]:
            if producer not in clusters.parent:
                continue
            a, b = clusters.find(producer), clusters.find(name)
            if a != b and not _creates_cycle(clusters, a, b, graph.index[name]):
                clusters.union(a, b)
    groups = [sorted(m, key=graph.index.__getitem__) for m in clusters.members.values()]
    return sorted(groups, key=lambda g: graph.index[g[0]])


def _creates_cycle(clusters: _Clusters, a: str, b: str, limit: int) -> bool:
    """Merging a (producer side) into b would close a cycle iff a reaches b via a third node."""
    graph = clusters.graph
    b_members = set(clusters.members[b])
    a_members = set(clusters.members[a])
    outside = [
        s for m in clusters.members[a] for s in graph.succs[m] if s not in b_members | a_members
    ]
    seen: set[str] = set()
    seen_clusters = {a, b}
    queue = deque(outside)
    while queue:
        node = queue.popleft()
        if node in seen or graph.index[node] > limit:
            continue
        seen.add(node)
        if node in b_members:
            return True
        root = clusters._root(node)
        if root in clusters.members:
            if root in seen_clusters:
                continue
            seen_clusters.add(root)
            queue.extend(s for m in clusters.members[root] for s in graph.succs[m])
        else:
            queue.extend(graph.succs[node])
    return False


def fuse_partitions(
    graph: NodeGraph, groups: list[list[str]], candidates: set[str], outputs: list[str]
) -> list[Partition]:
    """Name the clusters, pull in the constants they read, and compute their boundaries."""
    partitions = []
    for i, group in enumerate(groups):
        members = set(group)
        constants = sorted(
            {
                p
                for m in group
                for p in graph.data_preds[m]
                if p in candidates and graph.nodes[p].op == "Const" and p not in members
            },
            key=graph.index.__getitem__,
        )
        partition = Partition(f"kiln_subgraph_{i}", list(group), constants)
        _set_boundary(graph, partition, outputs)
        partitions.append(partition)
    return partitions


def _set_boundary(graph: NodeGraph, partition: Partition, graph_outputs: list[str]) -> None:
    inside = set(partition.nodes) | set(partition.constants)
    inputs: dict[str, None] = {}
    controls: dict[str, None] = {}
    for name in partition.nodes:
        for raw in graph.nodes[name].input:
            src, _, control = parse_input(raw)
            if src in inside:
                continue
            if control:
                controls[src] = None
            else:
                inputs[tensor_name(raw)] = None
    leaving: dict[str, None] = {}
    for name in graph.order:
        if name in inside:
            continue
        for raw in graph.nodes[name].input:
            src, _, control = parse_input(raw)
            if not control and src in partition.nodes:
                leaving[tensor_name(raw)] = None
    for out in graph_outputs:
        if parse_input(out)[0] in partition.nodes:
            leaving[tensor_name(out)] = None
    partition.inputs = list(inputs)
    partition.control_inputs = list(controls)
    partition.outputs = sorted(
        leaving, key=lambda t: (graph.index[t.rsplit(":", 1)[0]], int(t.rsplit(":", 1)[1]))
    )


def is_trivial(graph: NodeGraph, partition: Partition) -> bool:
    """Not worth a call: only data movement, or one op that is not a contraction or a loop."""
    compute = [graph.nodes[n].op for n in partition.nodes if graph.nodes[n].op not in TRIVIAL_OPS]
    return not compute or (len(compute) == 1 and compute[0] not in SUBSTANTIAL_OPS)


def contracted_is_acyclic(graph: NodeGraph, partitions: list[Partition]) -> bool:
    """Whether the graph stays a DAG once every partition is contracted into one node."""
    owner = {n: p.name for p in partitions for n in p.nodes}
    preds: dict[str, set[str]] = {}
    for name in graph.order:
        me = owner.get(name, name)
        preds.setdefault(me, set())
        for src in graph.preds[name]:
            other = owner.get(src, src)
            if other != me:
                preds[me].add(other)
    succs: dict[str, set[str]] = {k: set() for k in preds}
    for node, sources in preds.items():
        for src in sources:
            succs.setdefault(src, set()).add(node)
    pending = {k: len(v) for k, v in preds.items()}
    ready = deque(k for k, v in pending.items() if v == 0)
    visited = 0
    while ready:
        node = ready.popleft()
        visited += 1
        for succ in succs.get(node, ()):
            pending[succ] -= 1
            if pending[succ] == 0:
                ready.append(succ)
    return visited == len(pending)


class Partitioning(NamedTuple):
    """The ``partition`` pass's result: the subgraphs, and why each other node stays on CPU."""

    partitions: list[Partition]
    reasons: Mapping[str, str]


def partition_graph(placement: Placement, outputs: list[str], drop_trivial: bool) -> Partitioning:
    """Form acyclic subgraphs from the candidates, named ``kiln_subgraph_<i>`` in graph order.

    Args:
        placement: the ``place`` pass's result.
        outputs: the graph's output tensors (they leave the subgraph that computes them).
        drop_trivial: leave subgraphs of fewer than 2 compute ops on CPU (automatic placement).

    Raises:
        TraceError: the partitions would form a cycle (a bug).
    """
    graph, candidates = placement.graph, set(placement.candidates)
    groups = propose_partitions(graph, candidates)
    proposed = fuse_partitions(graph, groups, candidates, outputs)
    reasons = dict(placement.reasons)
    kept = []
    for p in proposed:
        if drop_trivial and is_trivial(graph, p):
            reasons.update(dict.fromkeys(p.nodes, TRIVIAL_REASON))
        else:
            kept.append(p)
    if not contracted_is_acyclic(graph, kept):
        raise TraceError("partitioning produced a cycle (a bug)", "partition")
    named = [replace(p, name=f"kiln_subgraph_{i}") for i, p in enumerate(kept)]
    logger.debug("partition: %d subgraphs (%d proposed)", len(named), len(proposed))
    return Partitioning(named, reasons)
