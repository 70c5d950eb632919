"""Pass ``rewrite``: every kept subgraph becomes one call node marked for XLA compilation.

The call is a ``StatefulPartitionedCall`` with ``_XlaMustCompile=true`` whose function is the
compiled subgraph's FunctionDef, added to the GraphDef's library. TensorFlow's function inliner
leaves such calls alone, so they stay compiled after save and reload.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from tensorflow.core.framework import function_pb2, graph_pb2

from kiln_worker.tracer.partition import parse_input, tensor_name

if TYPE_CHECKING:
    from kiln_worker.tracer.compile import SubgraphResult

logger = logging.getLogger(__name__)
XLA_MUST_COMPILE = "_XlaMustCompile"


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


def _dedupe_controls(inputs: list[str]) -> list[str]:
    """Drop repeated control inputs; data inputs stay as they are (``Mul(x, x)`` is two)."""
    data = [i for i in inputs if not i.startswith("^")]
    return data + list(dict.fromkeys(i for i in inputs if i.startswith("^")))


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
        copy.input.extend(_dedupe_controls([i for i in remapped if i is not None]))
    for result in kept:
        p = result.partition
        inputs = [tensors.get(t, t) for t in p.inputs]
        inputs += [f"^{owners.get(c, c)}" for c in dict.fromkeys(p.control_inputs)]
        _call_node(new, result, list(dict.fromkeys(inputs)))
    _merge_library(new, kept)
    new_outputs = [tensors.get(tensor_name(o), o) for o in outputs]
    pruned = prune(new, new_outputs + keep)
    logger.debug("rewrite: %d call nodes, %d nodes", len(kept), len(pruned.node))
    return pruned, new_outputs


def _merge_library(graph_def: Any, kept: list[SubgraphResult]) -> None:
    present = {f.signature.name for f in graph_def.library.function}
    for result in kept:
        assert result.compiled is not None
        for fdef in result.compiled.function_defs:
            if fdef.signature.name not in present:
                graph_def.library.function.add().CopyFrom(fdef)
                present.add(fdef.signature.name)


def _rename_attrs(node: Any, names: dict[str, str]) -> None:
    for value in node.attr.values():
        if value.HasField("func") and value.func.name in names:
            value.func.name = names[value.func.name]
        elif value.HasField("list"):
            for func in value.list.func:
                if func.name in names:
                    func.name = names[func.name]


class GraphImporter:
    """Imports a GraphDef inside a tf.function *with* its function library.

    ``import_graph_def`` puts library functions into the C graph only, so the enclosing
    tf.function neither runs nor saves them reliably. Here the library is loaded once as
    concrete functions (under fresh names, as ``tf.saved_model.load`` does), the nodes are
    renamed to match, and each import registers the functions with the graph being built.
    """

    def __init__(self, graph_def: Any) -> None:
        from tensorflow.python.saved_model import function_deserialization
        from tensorflow.python.util import compat

        # load_function_def_library renames the FunctionDefs it is given *in place*: give it a
        # copy, or the caller's graph keeps nodes that name functions its library lost (which
        # then resolve only while the original model's functions happen to be registered).
        library = function_pb2.FunctionDefLibrary()
        library.CopyFrom(graph_def.library)
        self.functions = (
            function_deserialization.load_function_def_library(library) if library.function else {}
        )
        names = {old: compat.as_str(fn.name) for old, fn in self.functions.items()}
        self.graph_def = graph_pb2.GraphDef()
        self.graph_def.CopyFrom(graph_def)
        self.graph_def.ClearField("library")
        for node in self.graph_def.node:
            _rename_attrs(node, names)

    def __call__(self, input_map: dict[str, Any], outputs: list[str], name: str = "") -> list[Any]:
        """Import into the current (function) graph; return the output tensors."""
        import tensorflow as tf

        graph = tf.compat.v1.get_default_graph()
        for function in self.functions.values():
            function.add_to_graph(graph)
        return list(
            tf.graph_util.import_graph_def(
                self.graph_def, input_map=input_map, return_elements=outputs, name=name
            )
        )


def prune(graph_def: Any, roots: list[str]) -> Any:
    """Drop nodes that no root depends on (e.g. constants now inside subgraphs)."""
    nodes = {n.name: n for n in graph_def.node}
    needed: set[str] = set()
    queue = deque(parse_input(r)[0] for r in roots)
    while queue:
        name = queue.popleft()
        if name in needed or name not in nodes:
            continue
        needed.add(name)
        queue.extend(parse_input(i)[0] for i in nodes[name].input)
    out = graph_pb2.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    out.node.extend(n for n in graph_def.node if n.name in needed)
    return out


def call_nodes(graph_def: Any) -> list[Any]:
    """The call nodes marked for XLA compilation (also inside library functions)."""

    def marked(node: Any) -> bool:
        return XLA_MUST_COMPILE in node.attr and bool(node.attr[XLA_MUST_COMPILE].b)

    found = [n for n in graph_def.node if marked(n)]
    for fdef in graph_def.library.function:
        found.extend(n for n in fdef.node_def if marked(n))
    return found
