"""TensorFlow 1 SavedModels in the ``inputs`` pass: what an Estimator's export holds.

``tf.saved_model.load`` gives a TF1 export's signatures as functions wrapping the whole v1 graph
(a ``WrappedFunction``). Traced as they are, they could not be frozen:

* grappler does not inline the wrapped (pruned) function into the traced one (it holds stateful
  ops), and TensorFlow's freezer leaves a ``ResourceGather`` inside a function unconverted while
  it turns the variable fed to it into a float constant ("expected type resource != float");
* its lookup tables are created in the graph (a ``HashTableV2`` node, shared by name and
  initialised once by the export's main op when it was loaded) rather than captured;
* the graph keeps the v1 collections: freezing builds a MetaGraph with them, grappler keeps the
  ``table_initializer`` ops, which need the v1 variables as they were before being lifted to
  resource arguments, and the import fails ("Failed to import metagraph").

:func:`as_tf2` therefore freezes the wrapped graph itself (collections hidden), reads each table
through the loaded function and rebuilds it (as :mod:`kiln_worker.tracer.tables` does for
captured ones), and returns a plain TF2 function importing the frozen graph with the rebuilt
tables' handles fed where the tables were created: the passes then see a TF2 function.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.python.eager import wrap_function
from tensorflow.python.framework import convert_to_constants
from tensorflow.python.ops import gen_lookup_ops

from kiln_worker.tracer import tables
from kiln_worker.tracer.errors import UnsupportedModelError

logger = logging.getLogger(__name__)
_PASS = "inputs"
#: Table-creating ops of a v1 graph whose contents a loaded export already holds.
_V1_TABLE_OPS = frozenset({"HashTableV2"})
#: TF1 control flow (``tf.while_loop`` and ``tf.cond`` as TensorFlow 1 built them).
V1_CONTROL_FLOW_OPS = frozenset(
    {"Enter", "RefEnter", "Exit", "RefExit", "NextIteration", "RefNextIteration", "LoopCond",
     "Switch", "RefSwitch", "Merge", "RefMerge"}
)


def is_v1_signature(func: Any) -> bool:
    """Whether ``func`` is a loaded TF1 SavedModel's signature: a function wrapping a v1 graph
    that takes keyword arguments only (a ``tf.compat.v1.wrap_function`` of the user's own is
    traced as it is)."""
    if not isinstance(func, wrap_function.WrappedFunction):
        return False
    args, kwargs = func.structured_input_signature
    keywords = getattr(func, "_arg_keywords", None) or []
    return not args and bool(kwargs) and sorted(keywords) == sorted(kwargs)


@contextlib.contextmanager
def without_collections(concrete: Any) -> Iterator[None]:
    """Empty a v1 signature's graph collections while freezing, then put them back."""
    graph = concrete.graph
    saved = {key: list(graph.get_collection(key)) for key in graph.get_all_collection_keys()}
    for key in saved:
        graph.clear_collection(key)
    try:
        yield
    finally:
        for key, values in saved.items():
            graph.get_collection_ref(key)[:] = values


def as_tf2(signature: Any) -> Any:
    """A TF2 ConcreteFunction computing what the v1 ``signature`` computes, taking the same
    keyword arguments and returning the same dict, with its variables frozen and its tables
    rebuilt and captured.

    Raises:
        UnsupportedModelError: a table that is written to, or that cannot be rebuilt.
    """
    with without_collections(signature):
        frozen, graph_def = convert_to_constants.convert_variables_to_constants_v2_as_graph(
            signature, lower_control_flow=False)
    placeholders = [t.name for t in frozen.inputs if t.dtype != tf.resource]
    del frozen
    keywords = list(signature._arg_keywords)  # the order of its placeholders
    kwargs_spec = signature.structured_input_signature[1]
    if len(keywords) != len(placeholders):
        raise UnsupportedModelError(
            f"cannot match this TF1 signature's inputs {sorted(kwargs_spec)} to its graph's "
            f"placeholders {placeholders}", _PASS)
    snapshots = snapshot_graph_tables(signature, graph_def)
    outputs = {key: tensor.name for key, tensor in signature.structured_outputs.items()}

    def imported(*inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        feeds = dict(zip(placeholders, inputs, strict=True))
        feeds.update({name: tf.identity(t.resource_handle) for name, t in snapshots.items()})
        values = tf.graph_util.import_graph_def(
            graph_def, input_map=feeds, return_elements=list(outputs.values()), name="v1")
        return dict(zip(outputs, values, strict=True))

    specs = [kwargs_spec[k] for k in keywords]
    if V1_CONTROL_FLOW_OPS.isdisjoint(n.op for n in graph_def.node):
        # tf.function: its stateful ops (table lookups) become control outputs, so the freeze
        # pass's inliner takes the call apart and its ops can be compiled.
        concrete = tf.function(imported, autograph=False).get_concrete_function(*specs)
    else:
        # v1 loops (Enter/Exit frames): a v1 graph again (wrap_function), since tf.function's
        # automatic control dependencies would chain stateful ops across the frames. Such a call
        # is not inlined: it runs on CPU whole.
        concrete = wrap_function.wrap_function(imported, specs)
    concrete._arg_keywords, concrete._num_positional_args = keywords, 0  # called by keyword
    concrete._kiln_tables = list(snapshots.values())  # keep the rebuilt tables alive
    return concrete


def snapshot_graph_tables(concrete: Any, graph_def: Any) -> dict[str, Any]:
    """Replace each v1 table the frozen graph creates (and only reads) by a fed placeholder.

    Returns:
        Placeholder tensor name → the rebuilt ``tf.lookup.StaticHashTable`` to feed there (the
        node keeps its name; ``graph_def`` is changed in place).

    Raises:
        UnsupportedModelError: a table that is written to, or that cannot be rebuilt.
    """
    found: dict[str, Any] = {}
    for node in graph_def.node:
        if node.op not in _V1_TABLE_OPS:
            continue
        dtypes = tables.table_dtypes(graph_def, node.name)
        if dtypes is None:
            continue
        found[f"{node.name}:0"] = tables.rebuild(node.name, _contents(concrete, node.name, dtypes),
                                                 dtypes)
        name = node.name
        node.Clear()
        node.name, node.op = name, "Placeholder"
        node.attr["dtype"].type = types_pb2.DT_RESOURCE
    logger.debug("inputs: %d tables of a TF1 graph carried as snapshots", len(found))
    return found


def _contents(concrete: Any, name: str, dtypes: tuple[Any, Any]) -> tuple[Any, Any]:
    """The keys and values the loaded graph's table ``name`` holds now."""
    graph = concrete.graph
    with graph.as_default():
        handle = graph.get_operation_by_name(name).outputs[0]
        keys, values = gen_lookup_ops.lookup_table_export_v2(handle, dtypes[0], dtypes[1])
    exported = concrete.prune([], [keys, values])()
    return tf.convert_to_tensor(exported[0]), tf.convert_to_tensor(exported[1])
