"""Pass ``freeze``: variables become constants (or, with ``--extract-weights``, extra inputs),
then a grappler clean-up that deliberately leaves fusions (remapper) and layout changes out.
A large model's large constants go back into variables fed to the graph before the clean-up
(:func:`weights_as_variables`), so that no pass copies its weights.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2, types_pb2
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2
from tensorflow.python.framework import convert_to_constants
from tensorflow.python.grappler import tf_optimizer
from tensorflow.python.training import saver

from kiln_worker.tracer import tables
from kiln_worker.tracer.errors import UnsupportedModelError
from kiln_worker.tracer.writes import check_no_variable_writes

logger = logging.getLogger(__name__)
_PASS = "freeze"
# Grappler passes that only simplify; "remapper" (fuses MatMul+BiasAdd+Relu into _FusedMatMul,
# which XLA cannot compile) and "layout" are left out on purpose: partitioning comes first.
_CLEANUP_OPTIMIZERS = ("function", "constfold", "dependency", "arithmetic", "pruning")
_FUNCTIONAL_CASE_OPS = frozenset({"Case", "StatelessCase"})
#: A model whose frozen constants add up to this many bytes keeps its large ones as variables
#: (see :func:`weights_as_variables`); a constant is large from ``LARGE_CONSTANT_BYTES``. Below it,
#: constants are worth their copies: grappler folds them (ResNet50, 98 MiB, runs 20% faster at
#: batch 1 with its batch norms folded into the convolutions) and the copies fit the limits
#: (ResNet50 peaks at 5 GiB, its weights' size times 35 on top of the runtime's 1 GiB).
WEIGHTS_AS_VARIABLES_BYTES = 128 * 2**20
LARGE_CONSTANT_BYTES = 64 * 2**10


@dataclass
class FrozenGraph:
    """A self-contained GraphDef with named input and output tensors.

    ``weights`` (with ``--extract-weights``, or for a large model's large constants) maps
    placeholder names to the variables whose values they take at run time; ``tables`` maps placeholder names to the lookup tables whose
    handles they take (see :mod:`kiln_worker.tracer.tables`).
    """

    graph_def: Any
    input_names: list[str]
    output_names: list[str]
    weights: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, Any] = field(default_factory=dict)

    @property
    def state_names(self) -> list[str]:
        """The placeholders fed from state at run time: weights, then tables."""
        return list(self.weights) + list(self.tables)

    def state_values(self) -> list[Any]:
        """The tensors those placeholders take (call inside the function that runs the graph)."""
        weights = [tf.convert_to_tensor(v) for v in self.weights.values()]
        return weights + [t.resource_handle for t in self.tables.values()]


def cleanup(graph_def: Any, fetches: list[str]) -> Any:
    """Run grappler's simplifying passes (no fusion, no layout change) on ``graph_def``.

    Args:
        graph_def: the frozen GraphDef.
        fetches: tensor names that must survive (inputs and outputs).

    Returns:
        The optimised GraphDef.
    """
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    meta = saver.export_meta_graph(graph_def=graph_def, graph=graph)
    collection = meta_graph_pb2.CollectionDef()
    collection.node_list.value.extend(fetches)
    meta.collection_def["train_op"].CopyFrom(collection)
    config = config_pb2.ConfigProto()
    rewrite = config.graph_options.rewrite_options
    rewrite.optimizers.extend(_CLEANUP_OPTIMIZERS)
    rewrite.min_graph_nodes = -1
    return tf_optimizer.OptimizeGraph(config, meta)


def drop_placeholder_control_edges(graph_def: Any) -> Any:
    """Remove ``^placeholder`` control inputs: meaningless, and they defeat ``input_map``."""
    placeholders = {n.name for n in graph_def.node if n.op == "Placeholder"}
    for node in graph_def.node:
        kept = [i for i in node.input if not (i.startswith("^") and i[1:] in placeholders)]
        if len(kept) != len(node.input):
            del node.input[:]
            node.input.extend(kept)
    return graph_def


def _unfreezable(graph_def: Any, inputs: list[str]) -> list[str]:
    """Nodes that still hold state after freezing: resources other than fed tables, in-graph
    tables, iterators."""
    input_nodes = {n.split(":")[0] for n in inputs}
    # A captured resource that only orders other ops (a control input) holds nothing the graph
    # reads: those edges are dropped below, so only resources read as data count.
    read = {i.split(":")[0] for n in graph_def.node for i in n.input if not i.startswith("^")}
    bad = []
    for node in graph_def.node:
        is_resource_input = node.op == "Placeholder" and node.attr["dtype"].type in (
            types_pb2.DT_RESOURCE,
            types_pb2.DT_VARIANT,
        )
        if (
            (is_resource_input and node.name not in input_nodes and node.name in read)
            or node.op in tables.TABLE_STATE_OPS
            or "Iterator" in node.op
        ):
            bad.append(f"{node.name} ({node.op})")
    return bad


def _check_no_state(graph_def: Any, inputs: list[str]) -> None:
    bad = _unfreezable(graph_def, inputs)
    if bad:
        raise UnsupportedModelError(
            "the function keeps resource tensors that cannot be frozen into constants: "
            f"{', '.join(bad[:5])}. Lookup tables are supported when the function only reads "
            "them and they are created outside it (as Keras layers and tf.lookup tables "
            "built before tracing are); iterators and other resources are not: read your data "
            "before the model and trace the computation only",
            _PASS,
        )


def _finish(
    graph_def: Any, inputs: list[str], outputs: list[str], captures: Any, weights: dict[str, Any]
) -> FrozenGraph:
    """Snapshot the tables, refuse other state, clean up; the tables that survive are fed."""
    snapshots = tables.snapshot_tables(captures, graph_def)
    _check_no_state(graph_def, inputs + list(weights) + list(snapshots))
    fetches = inputs + list(weights) + outputs
    optimized = drop_placeholder_control_edges(cleanup(graph_def, fetches))
    present = {n.name for n in optimized.node}
    kept = {k: v for k, v in snapshots.items() if k.split(":")[0] in present}
    logger.debug("freeze: %d nodes -> %d after clean-up", len(graph_def.node), len(optimized.node))
    return FrozenGraph(optimized, inputs, outputs, weights, kept)


@contextlib.contextmanager
def _case_kept_functional() -> Iterator[None]:
    """Make ``lower_control_flow=False`` cover ``Case`` too, as it does ``If`` and ``While``.

    TensorFlow's freezer lists only If/While as control flow: the function inliner then lowers
    every ``Case`` (``tf.switch_case``, ``tf.case``) into Switch/Merge, which no backend compiles
    and which splits the graph into many pieces. The list is read at call time, so widening it
    for the duration of one call is enough.
    """
    ops = "_CONTROL_FLOW_OPS"
    original = getattr(convert_to_constants, ops, None)
    if not isinstance(original, (set, frozenset)):  # another TensorFlow version: leave it
        yield
        return
    setattr(convert_to_constants, ops, set(original) | _FUNCTIONAL_CASE_OPS)
    try:
        yield
    finally:
        setattr(convert_to_constants, ops, original)


def freeze(concrete: Any) -> FrozenGraph:
    """Freeze ``concrete``'s variables into constants and clean up the graph.

    Raises:
        UnsupportedModelError: state that cannot be frozen (variables the function writes,
            tables it writes or creates, other resources).
    """
    check_no_variable_writes(concrete)
    try:
        with _case_kept_functional():
            frozen_func, graph_def = convert_to_constants.convert_variables_to_constants_v2_as_graph(
                concrete,
                lower_control_flow=False,  # keep While/If/Case functional: one node each
            )
    except Exception as e:  # TF raises several types here
        raise UnsupportedModelError(f"freezing variables failed: {e}", _PASS) from e
    inputs = [t.name for t in frozen_func.inputs if t.dtype != tf.resource]
    outputs = [t.name for t in frozen_func.outputs]
    del frozen_func  # it holds a second copy of every constant
    weights = weights_as_variables(graph_def)
    return _finish(graph_def, inputs, outputs, concrete.graph.captures, weights)


def _constant_bytes(node: Any) -> int:
    """Size of a ``Const`` node's value (0 for strings and other non-numeric types)."""
    if node.op != "Const":
        return 0
    dtype = tf.as_dtype(node.attr["dtype"].type)
    if dtype in (tf.string, tf.resource, tf.variant):
        return 0
    return int(np.prod([d.size for d in node.attr["value"].tensor.tensor_shape.dim])) * int(dtype.size)


def weights_as_variables(graph_def: Any) -> dict[str, Any]:
    """Turn a large model's large constants back into weights: each becomes a placeholder fed by
    a new (non-trainable) variable holding its value; return them as ``FrozenGraph.weights``.

    Frozen into the graph, every weight is copied by each pass that copies the graph (grappler,
    shape inference, subgraph imports, XLA's HLO, the function library, saving): a BERT-base
    encoder (420 MiB of weights) needed over 14 GiB. As placeholders they are copied by none
    (the same encoder peaks at 5 GiB), and compiled subgraphs take them as arguments. Smaller
    models keep their constants (XLA and grappler fold them into the code).
    """
    sizes = {node.name: _constant_bytes(node) for node in graph_def.node}
    if sum(sizes.values()) < WEIGHTS_AS_VARIABLES_BYTES:
        return {}
    weights = {}
    for node in graph_def.node:
        if sizes[node.name] < LARGE_CONSTANT_BYTES:
            continue
        value = tf.make_ndarray(node.attr["value"].tensor)
        dtype, name = node.attr["dtype"].type, node.name
        node.Clear()
        node.name, node.op = name, "Placeholder"
        node.attr["dtype"].type = dtype
        node.attr["shape"].shape.CopyFrom(tf.TensorShape(value.shape).as_proto())
        weights[f"{name}:0"] = tf.Variable(value, trainable=False, name=name.replace("/", "_"))
    logger.debug("freeze: %d large constants kept as variables", len(weights))
    return weights


def extract_weights(concrete: Any) -> FrozenGraph:
    """Like :func:`freeze`, but each variable read becomes a placeholder fed by the variable.

    The GraphDef then holds no weights, so it stays small and models over 2 GB trace and save.

    Raises:
        UnsupportedModelError: variables used other than by a plain read (e.g. inside a loop),
            or written.
    """
    check_no_variable_writes(concrete)
    graph_def = graph_pb2.GraphDef()
    graph_def.CopyFrom(concrete.graph.as_graph_def())
    handles = {}
    for external, internal in concrete.graph.captures:
        variable = _variable_of(concrete, external)
        if variable is not None:
            handles[internal.op.name] = variable
    _captured_tensors_as_constants(graph_def, concrete.graph.captures)
    arguments = concrete.inputs[: len(concrete.inputs) - len(concrete.captured_inputs)]
    inputs = [t.name for t in arguments if t.dtype != tf.resource]
    outputs = [t.name for t in concrete.outputs]
    weights: dict[str, Any] = {}
    keep = []
    for node in graph_def.node:
        source = node.input[0].split(":")[0] if node.input else ""
        if node.op == "ReadVariableOp" and source in handles:
            dtype, name = node.attr["dtype"].type, node.name
            node.Clear()
            node.name, node.op = name, "Placeholder"
            node.attr["dtype"].type = dtype
            weights[f"{name}:0"] = handles[source]
        if node.name not in handles:
            keep.append(node)
    del graph_def.node[:]
    graph_def.node.extend(keep)
    used = {i.split(":")[0].lstrip("^") for n in graph_def.node for i in n.input}
    if used & set(handles):
        raise UnsupportedModelError(
            "--extract-weights needs every variable to be read with a plain read; this model "
            "uses variables inside functions or loops: trace it without --extract-weights",
            _PASS,
        )
    return _finish(graph_def, inputs, outputs, concrete.graph.captures, weights)


def _captured_tensors_as_constants(graph_def: Any, captures: Any) -> None:
    """Captured tensors that are not resources (e.g. a table's default value) become Consts."""
    values = {
        internal.op.name: external
        for external, internal in captures
        if external.dtype != tf.resource and hasattr(external, "numpy")
    }
    for node in graph_def.node:
        if node.op == "Placeholder" and node.name in values:
            name = node.name
            node.Clear()
            node.name, node.op = name, "Const"
            node.attr["dtype"].type = values[name].dtype.as_datatype_enum
            node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(values[name].numpy()))


def _variable_of(concrete: Any, handle: Any) -> Any:
    for variable in concrete.graph.variables:
        if variable.handle is handle:
            return variable
    return None
