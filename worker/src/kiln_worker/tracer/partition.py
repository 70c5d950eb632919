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
from dataclasses import dataclass, field
from typing import Any

from kiln_worker.tracer.placement import TRIVIAL_OPS

logger = logging.getLogger(__name__)


def parse_input(name: str) -> tuple[str, int, bool]:
    """Split a NodeDef input into (node, output index, is_control)."""
    if name.startswith("^"):
        return name[1:], -1, True
    node, _, index = name.partition(":")
    return node, int(index) if index else 0, False


def tensor_name(name: str) -> str:
    """Canonical ``node:index`` form of a tensor name."""
    node, index, _ = parse_input(name)
    return f"{node}:{index}"


class NodeGraph:
    """Adjacency and topological order of a GraphDef (data and control edges)."""

    def __init__(self, graph_def: Any) -> None:
        self.nodes = {n.name: n for n in graph_def.node}
        self.preds: dict[str, list[str]] = {n: [] for n in self.nodes}
        self.data_preds: dict[str, list[str]] = {n: [] for n in self.nodes}
        self.succs: dict[str, list[str]] = {n: [] for n in self.nodes}
        for node in graph_def.node:
            for raw in node.input:
                src, _, control = parse_input(raw)
                if src not in self.nodes:
                    continue
                self.preds[node.name].append(src)
                self.succs[src].append(node.name)
                if not control and src not in self.data_preds[node.name]:
                    self.data_preds[node.name].append(src)
        self.order = self._topological_order([n.name for n in graph_def.node])
        self.index = {name: i for i, name in enumerate(self.order)}

    def _topological_order(self, names: list[str]) -> list[str]:
        pending = {n: len(set(self.preds[n])) for n in names}
        ready = deque(n for n in names if pending[n] == 0)
        order = []
        while ready:
            name = ready.popleft()
            order.append(name)
            for succ in dict.fromkeys(self.succs[name]):
                pending[succ] -= 1
                if pending[succ] == 0:
                    ready.append(succ)
        if len(order) != len(names):
            raise ValueError("the graph has a cycle outside of functional control flow")
        return order


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


def is_trivial(graph: NodeGraph, partition: Partition, min_compute_ops: int = 2) -> bool:
    """A subgraph with fewer than ``min_compute_ops`` real computations is not worth a call."""
    compute = [n for n in partition.nodes if graph.nodes[n].op not in TRIVIAL_OPS]
    return len(compute) < min_compute_ops


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
