"""GraphDef helpers that several passes share: tensor names, adjacency, importing, pruning.

Kept apart from the passes so that the passes only import downwards: every tracer module may
import this one, and this one imports no other pass.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar, cast

import tensorflow as tf
from tensorflow.core.framework import function_pb2, graph_pb2, node_def_pb2

#: Attribute that marks a call node (and its function) for XLA compilation.
XLA_MUST_COMPILE = "_XlaMustCompile"


def own_function(python_function: Callable[..., Any], **options: Any) -> Any:
    """``tf.function(python_function, **options)``, which TensorFlow's retracing detector counts
    as a function of its own. It keys its "triggered tf.function retracing" warning on the code
    object, so the many closures of one ``def`` that a trace builds (one per candidate model)
    looked like one function retraced again and again (a partial has no code object)."""
    partial = functools.partial(python_function)
    partial.__name__ = getattr(python_function, "__name__", "kiln_function")  # type: ignore[attr-defined]
    return tf.function(partial, **options)


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


def tensor_specs(graph_def: Any, names: list[str]) -> dict[str, tf.TensorSpec]:
    """Static dtype and shape of tensors, from shape inference on import."""
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    specs = {}
    for name in names:
        tensor = graph.get_tensor_by_name(name)
        specs[name] = tf.TensorSpec(tensor.shape, tensor.dtype)
    return specs


def _functions_in(attrs: Any) -> Iterator[Any]:
    """The function references (``NameAttrList``) among a node's attrs, nested ones too, by
    attr name (a protobuf map's own order changes from one process to the next)."""
    for value in (attrs[key] for key in sorted(attrs)):
        for func in [value.func] if value.HasField("func") else value.list.func:
            yield func
            yield from _functions_in(func.attr)


def _rename_attrs(node: Any, names: Mapping[str, str]) -> None:
    for func in _functions_in(node.attr):
        func.name = names.get(func.name, func.name)


def canonical_parts(graph_def: Any) -> Iterator[bytes]:
    """``graph_def`` serialized deterministically, piece by piece, with its library's functions
    renamed ``f0``, ``f1``, ... in the order the graph first calls them: TensorFlow numbers the
    functions it traces per process (``__inference_body_123``), so the same graph traced again
    in one process gets other names. The renaming is one-to-one: two graphs give the same parts
    only when they are the same up to their functions' names. (Pieces, so that the large
    constants are not copied.)"""
    library = {f.signature.name: f for f in graph_def.library.function}
    order: dict[str, None] = {}
    pending = [list(graph_def.node)]
    while pending:
        for func in (f for node in pending.pop() for f in _functions_in(node.attr)):
            if func.name in library and func.name not in order:
                order[func.name] = None
                pending.append(list(library[func.name].node_def))
    order.update(dict.fromkeys(sorted(library)))
    names = {name: f"f{i}" for i, name in enumerate(order)}
    yield graph_def.versions.SerializeToString(deterministic=True)
    for node in graph_def.node:
        if any(f.name in names for f in _functions_in(node.attr)):
            node = node_def_pb2.NodeDef.FromString(node.SerializeToString())
            _rename_attrs(node, names)
        yield node.SerializeToString(deterministic=True)
    for name in order:
        function = function_pb2.FunctionDef.FromString(library[name].SerializeToString())
        function.signature.name = names[name]
        for inner in function.node_def:
            _rename_attrs(inner, names)
        yield function.SerializeToString(deterministic=True)
    for gradient in graph_def.library.gradient:
        yield gradient.SerializeToString(deterministic=True)


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
        self.read = {parse_input(i)[0] for n in self.graph_def.node for i in n.input}

    def __call__(self, input_map: dict[str, Any], outputs: list[str], name: str = "") -> list[Any]:
        """Import into the current (function) graph; return the output tensors.

        Inputs that no node reads (an input no output uses) are left out of the ``input_map``.
        """
        input_map = {k: v for k, v in input_map.items() if parse_input(k)[0] in self.read}
        graph = tf.compat.v1.get_default_graph()
        for function in self.functions.values():
            function.add_to_graph(graph)
        return list(
            tf.graph_util.import_graph_def(
                self.graph_def, input_map=input_map, return_elements=outputs, name=name
            )
        )


def without_feeds(graph_def: Any, feeds: list[str]) -> Any:
    """``graph_def`` without the placeholders ``feeds`` name: an ``input_map`` supplies them.

    (A placeholder left in an imported graph also stops XLA from compiling the graph whole.)
    """
    fed = {parse_input(f)[0] for f in feeds}
    out = type(graph_def)()
    out.CopyFrom(graph_def)
    del out.node[:]
    out.node.extend(n for n in graph_def.node if n.name not in fed)
    return out


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


#: Functional control flow, which TensorFlow lowers to Switch/Merge when it runs it on CPU.
CONTROL_FLOW_OPS = frozenset(
    {"While", "StatelessWhile", "If", "StatelessIf", "Case", "StatelessCase"}
)
LOWERING_ATTR = "_lower_using_switch_merge"


def with_lowering(graph_def: Any) -> Any:
    """A copy of ``graph_def`` whose top-level control-flow nodes TensorFlow may lower again.

    Freezing marks every loop and branch "do not lower" to keep each one node for partitioning;
    run so by TensorFlow, a loop then calls its body as a function each iteration (an LSTM ran
    4x slower than the original model). The nodes left on CPU get TensorFlow's own behaviour back.
    """
    lowered = graph_pb2.GraphDef()
    lowered.CopyFrom(graph_def)
    for node in lowered.node:
        if node.op in CONTROL_FLOW_OPS and LOWERING_ATTR in node.attr:
            node.attr[LOWERING_ATTR].b = True
    return lowered


_F = TypeVar("_F", bound=Callable[..., Any])


def not_autograph(fn: _F) -> _F:
    """Keep AutoGraph from converting one of Kiln's own functions that runs while tracing.

    AutoGraph converts what a converted function calls; Kiln's helpers have no tensor-dependent
    Python control flow, and converting them cost ~0.3 s per trace for nothing.
    """
    return cast(_F, tf.autograph.experimental.do_not_convert(fn))

