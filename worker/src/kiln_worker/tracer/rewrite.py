"""Pass ``rewrite``: every kept subgraph becomes one call node marked for XLA compilation.

The call is a ``StatefulPartitionedCall`` with ``_XlaMustCompile=true`` whose function is the
compiled subgraph's FunctionDef, added to the GraphDef's library. TensorFlow's function inliner
leaves such calls alone, so they stay compiled after save and reload.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from tensorflow.core.framework import graph_pb2

from kiln_worker.tracer.graphs import (
    XLA_MUST_COMPILE,
    parse_input,
    prune,
    tensor_name,
    with_lowering,
)

if TYPE_CHECKING:
    from kiln_worker.tracer.compile import SubgraphResult

logger = logging.getLogger(__name__)


def _call_node(graph_def: Any, result: SubgraphResult, inputs: list[str]) -> None:
    assert result.compiled is not None  # only kept (compiled) subgraphs reach here
    fdef = result.compiled.function_defs[0]
    fdef.attr[XLA_MUST_COMPILE].b = True
    node = graph_def.node.add()
    node.name, node.op = result.partition.name, "StatefulPartitionedCall"
    node.input.extend(inputs)
    node.attr["f"].func.name = fdef.signature.name
    node.attr["Tin"].list.type.extend(a.type for a in fdef.signature.input_arg)
    node.attr["Tout"].list.type.extend(a.type for a in fdef.signature.output_arg)
    for key in ("config", "config_proto", "executor_type"):
        node.attr[key].s = b""
    node.attr[XLA_MUST_COMPILE].b = True


def _remap(raw: str, tensors: dict[str, str], owners: dict[str, str], me: str) -> str | None:
    src, _, control = parse_input(raw)
    if control:
        target = owners.get(src, src)
        return None if target == me else f"^{target}"
    return tensors.get(tensor_name(raw), raw)


def rewrite_graph(
    graph_def: Any, kept: list[SubgraphResult], outputs: list[str], keep: list[str]
) -> tuple[Any, list[str]]:
    """Replace each kept subgraph by one call node.

    Args:
        graph_def: the frozen GraphDef.
        kept: the compiled subgraphs to contract.
        outputs: the graph's output tensors.
        keep: input tensors whose nodes must survive pruning.

    Returns:
        The rewritten GraphDef and the output tensor names in it.
    """
    owners = {n: r.partition.name for r in kept for n in r.partition.nodes}
    tensors = {
        t: f"{r.partition.name}:{j}" for r in kept for j, t in enumerate(r.partition.outputs)
    }
    new = graph_pb2.GraphDef()
    new.versions.CopyFrom(graph_def.versions)
    new.library.CopyFrom(graph_def.library)
    for node in graph_def.node:
        if node.name in owners:
            continue
        copy = new.node.add()
        copy.CopyFrom(node)
        remapped = [_remap(i, tensors, owners, node.name) for i in node.input]
        del copy.input[:]
        copy.input.extend(_dedup_controls([i for i in remapped if i is not None]))
    for result in kept:
        p = result.partition
        inputs = [tensors.get(t, t) for t in p.inputs]
        inputs += [f"^{owners.get(c, c)}" for c in dict.fromkeys(p.control_inputs)]
        _call_node(new, result, list(dict.fromkeys(inputs)))
    _merge_library(new, kept)
    new_outputs = [tensors.get(tensor_name(o), o) for o in outputs]
    # The loops and branches left on CPU run as TensorFlow runs them (lowered).
    pruned = with_lowering(prune(new, new_outputs + keep))
    logger.debug("rewrite: %d call nodes, %d nodes", len(kept), len(pruned.node))
    return pruned, new_outputs


def _dedup_controls(inputs: list[str]) -> list[str]:
    """Drop repeated control inputs; a repeated data input (``MatMul(x, x)``) is meant."""
    seen: set[str] = set()
    kept = []
    for name in inputs:
        if name.startswith("^"):
            if name in seen:
                continue
            seen.add(name)
        kept.append(name)
    return kept


def _merge_library(graph_def: Any, kept: list[SubgraphResult]) -> None:
    present = {f.signature.name for f in graph_def.library.function}
    for result in kept:
        assert result.compiled is not None
        for fdef in result.compiled.function_defs:
            if fdef.signature.name not in present:
                graph_def.library.function.add().CopyFrom(fdef)
                present.add(fdef.signature.name)
