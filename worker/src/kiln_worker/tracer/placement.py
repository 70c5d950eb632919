"""Pass ``place``: which nodes may run on the accelerator.

A placement policy is one predicate over a NodeDef that can also say *why not*
(:class:`Policy`); policies combine with :func:`all_of` and :func:`any_of`, so the final policy
reads "backend support ∩ the user's subgraph_builder_function ∩ automatic heuristics".
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tensorflow.core.framework import types_pb2
from tensorflow.python.framework import op_def_registry

from kiln_worker.tracer.graphs import NodeGraph, parse_input
from kiln_worker.tracer.tables import TABLE_REASON, is_table_op

logger = logging.getLogger(__name__)

#: Ops that never go to the accelerator: graph plumbing.
NEVER_PLACED = frozenset({"Placeholder", "NoOp", "PlaceholderWithDefault", "_Arg", "_Retval"})
#: Dtypes the accelerator does not take. (DT_VARIANT is allowed: TensorLists live inside
#: compiled loops; :func:`keep_variants_inside` keeps one from crossing a subgraph's boundary.)
UNPLACEABLE_DTYPES = frozenset({types_pb2.DT_STRING, types_pb2.DT_RESOURCE})
#: Ops that only move or relabel data: a subgraph made of them only is not worth a call.
TRIVIAL_OPS = frozenset(
    {
        "Identity",
        "IdentityN",
        "Reshape",
        "Cast",
        "Const",
        "Squeeze",
        "ExpandDims",
        "Shape",
        "StopGradient",
        "Snapshot",
    }
)


#: Ops worth a compiled call even alone: contractions, convolutions and loops.
SUBSTANTIAL_OPS = frozenset(
    {
        "MatMul",
        "BatchMatMul",
        "BatchMatMulV2",
        "BatchMatMulV3",
        "Einsum",
        "Conv2D",
        "Conv3D",
        "Conv2DBackpropInput",
        "DepthwiseConv2dNative",
        "While",
        "StatelessWhile",
    }
)


@dataclass(frozen=True)
class Policy:
    """A named predicate: ``explain(node)`` is ``None`` when allowed, else the reason."""

    reason: str
    check: Callable[[Any], bool]

    def explain(self, node: Any) -> str | None:
        """Return ``None`` if ``node`` passes, else why it does not."""
        return None if self.check(node) else self.reason

    def __call__(self, node: Any) -> bool:
        return self.explain(node) is None


class _AllOf(Policy):
    def __init__(self, policies: Iterable[Policy]) -> None:
        parts = tuple(policies)
        super().__init__("all_of", lambda n: all(p(n) for p in parts))
        object.__setattr__(self, "parts", parts)

    def explain(self, node: Any) -> str | None:
        parts: tuple[Policy, ...] = self.parts  # type: ignore[attr-defined]
        for policy in parts:
            reason = policy.explain(node)
            if reason is not None:
                return reason
        return None


class _AnyOf(Policy):
    def __init__(self, policies: Iterable[Policy]) -> None:
        parts = tuple(policies)
        super().__init__("any_of", lambda n: any(p(n) for p in parts))
        object.__setattr__(self, "parts", parts)

    def explain(self, node: Any) -> str | None:
        reasons = [p.explain(node) for p in self.parts]  # type: ignore[attr-defined]
        return None if any(r is None for r in reasons) else " and ".join(map(str, reasons))


class _Explained(Policy):
    def __init__(self, reason: str, explainer: Callable[[Any], str | None]) -> None:
        super().__init__(reason, lambda n: explainer(n) is None)
        object.__setattr__(self, "explainer", explainer)

    def explain(self, node: Any) -> str | None:
        return self.explainer(node)  # type: ignore[attr-defined,no-any-return]


def backend_policy(backend: Any, library: Any) -> Policy:
    """The backend's ``is_node_supported(node, library)`` (which gives its reason) as a policy."""
    return _Explained(
        f"unsupported by {backend.name}", lambda node: backend.is_node_supported(node, library)
    )


def all_of(*policies: Policy) -> Policy:
    """A policy that allows a node only when every policy allows it."""
    return _AllOf(policies)


def any_of(*policies: Policy) -> Policy:
    """A policy that allows a node when at least one policy allows it."""
    return _AnyOf(policies)


def node_dtypes(node: Any) -> list[int]:
    """All dtypes named by a node's type attributes (``T``, ``dtype``, ``Tin`` ...)."""
    found = []
    for value in node.attr.values():
        if value.HasField("type"):
            found.append(value.type)
        elif value.HasField("list"):
            found.extend(value.list.type)
    return found


def table_policy() -> Policy:
    """Keep lookup-table ops on CPU (a table is state the accelerator does not hold)."""
    return Policy(TABLE_REASON, lambda node: not is_table_op(node.op))


def plumbing_policy() -> Policy:
    """Exclude table ops, placeholders, no-ops, fused (``_``-prefixed) ops and non-numeric dtypes."""

    def check(node: Any) -> bool:
        if node.op in NEVER_PLACED or node.op.startswith("_"):
            return False
        return not any(t in UNPLACEABLE_DTYPES for t in node_dtypes(node))

    return all_of(table_policy(), Policy("graph plumbing, fused op or string/resource dtype", check))


def builder_policy(subgraph_builder_function: Callable[[Any], Any]) -> Policy:
    """The user's ``subgraph_builder_function`` as a policy."""
    return Policy(
        "excluded by subgraph_builder_function",
        lambda node: bool(subgraph_builder_function(node)),
    )


def auto_policy() -> Policy:
    """Automatic placement's exclusions (measured: depthwise convs run 5-8x slower in XLA/CPU)."""
    return Policy(
        "kept on CPU by automatic placement (slower under XLA on CPU)",
        lambda node: node.op not in {"DepthwiseConv2dNative"},
    )


@dataclass(frozen=True)
class Placement:
    """The ``place`` pass's result: the graph, the candidate nodes, and why the others are not."""

    graph: NodeGraph
    candidates: frozenset[str]
    reasons: Mapping[str, str]


def node_policy(
    backend: Any,
    library: Any,
    subgraph_builder_function: Callable[[Any], Any] | None,
    measured: bool,
) -> Policy:
    """Plumbing ∩ backend support ∩ the user's callback, or else, when ``measured``, automatic
    placement's rules (with ``placement="all"`` every supported op is a candidate)."""
    policies = [plumbing_policy(), backend_policy(backend, library)]
    if subgraph_builder_function is not None:
        policies.append(builder_policy(subgraph_builder_function))
    elif measured:
        policies.append(auto_policy())
    return all_of(*policies)


def place(graph_def: Any, policy: Policy) -> Placement:
    """Apply ``policy`` to every node of ``graph_def``.

    Returns:
        The candidate node names, and for every other node the reason it stays on CPU.
    """
    candidates, reasons = set(), {}
    for node in graph_def.node:
        reason = policy.explain(node)
        if reason is None:
            candidates.add(node.name)
        else:
            reasons[node.name] = reason
    graph = NodeGraph(graph_def)
    keep_variants_inside(graph, candidates, reasons)
    logger.debug("place: %d of %d nodes are candidates", len(candidates), len(graph_def.node))
    return Placement(graph, frozenset(candidates), reasons)


def output_dtype(node: Any, index: int) -> int | None:
    """The dtype of output ``index`` of ``node``, from its OpDef (``None``: unknown op)."""
    op_def = op_def_registry.get(node.op)
    if op_def is None:
        return None
    for arg in op_def.output_arg:
        if arg.type_list_attr:
            types = list(node.attr[arg.type_list_attr].list.type)
        else:
            count = node.attr[arg.number_attr].i if arg.number_attr else 1
            one = node.attr[arg.type_attr].type if arg.type_attr else arg.type
            types = [one] * count
        if index < len(types):
            return int(types[index])
        index -= len(types)
    return None


def keep_variants_inside(graph: NodeGraph, candidates: set[str], reasons: dict[str, str]) -> None:
    """Leave on CPU every candidate that passes a variant (a TensorList) to or from a CPU node.

    XLA takes no variant at a subgraph's boundary ("TensorList crossing the XLA/TF boundary"), so
    such a subgraph failed to compile and took every op with it back to CPU: a ``tf.map_fn`` that
    decodes images on CPU sent the conv net after it back too. Only the TensorList ops at the
    edge stay on CPU now (repeated until no variant edge crosses, as each removal may make more).
    """
    edges = [
        (src, node.name)
        for node in graph.nodes.values()
        for src, index, control in map(parse_input, node.input)
        if not control and src in graph.nodes
        and output_dtype(graph.nodes[src], index) == types_pb2.DT_VARIANT
    ]
    changed = True
    while changed:
        changed = False
        for src, dst in edges:
            if (src in candidates) == (dst in candidates):
                continue
            inside, outside = (src, dst) if src in candidates else (dst, src)
            candidates.discard(inside)
            reasons[inside] = (
                f"passes a TensorList (variant) to or from {outside}, which stays on CPU: "
                "a variant cannot cross a compiled subgraph's boundary"
            )
            changed = True
