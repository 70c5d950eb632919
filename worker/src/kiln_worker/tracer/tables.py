"""Lookup tables in the ``freeze`` pass: kept on CPU and carried by the traced model.

A function that looks keys up in a table (``StringLookup``, ``IntegerLookup``,
``TextVectorization``, ``tf.lookup.StaticHashTable`` ...) captures the table's resource handle,
which freezing cannot turn into a constant. Instead, each captured table is read once
(``LookupTableExportV2``) and rebuilt as a ``tf.lookup.StaticHashTable`` initialised from those
tensors. The traced model owns the rebuilt tables, so they are saved with it: their contents live
inside the SavedModel and a vocabulary file the original read (an asset) is no longer needed.
Their handles are fed to the graph where the captured handle was. Tracing is for inference: a
graph that writes to a table, or creates one inside the function, is refused with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.python.ops import gen_lookup_ops

from kiln_worker.tracer.errors import UnsupportedModelError

logger = logging.getLogger(__name__)
_PASS = "freeze"
#: Ops that only read a table: these keep working on a snapshot of its contents.
TABLE_READ_OPS = frozenset(
    {"LookupTableFindV2", "LookupTableSizeV2", "LookupTableExportV2", "LookupTableFind"}
)
#: Ops that change a table or make one: a traced (inference) graph must not hold them.
TABLE_STATE_OPS = frozenset(
    {
        "LookupTableInsertV2",
        "LookupTableRemoveV2",
        "LookupTableImportV2",
        "InitializeTableV2",
        "InitializeTableFromTextFileV2",
        "InitializeTableFromDataset",
        "HashTableV2",
        "MutableHashTableV2",
        "MutableHashTableOfTensorsV2",
        "MutableDenseHashTableV2",
        "AnonymousHashTable",
        "AnonymousMutableHashTable",
        "AnonymousMutableHashTableOfTensors",
        "AnonymousMutableDenseHashTable",
    }
)
#: The reason the report gives for every table op.
TABLE_REASON = "lookup table: stateful, stays on CPU"
#: Where a functional op's inputs go: (function attribute, first input passed to it).
_CALLED = {
    "While": (("cond", 0), ("body", 0)),
    "StatelessWhile": (("cond", 0), ("body", 0)),
    "If": (("then_branch", 1), ("else_branch", 1)),
    "StatelessIf": (("then_branch", 1), ("else_branch", 1)),
    "Case": (("branches", 1),),
    "StatelessCase": (("branches", 1),),
    "PartitionedCall": (("f", 0),),
    "StatefulPartitionedCall": (("f", 0),),
}
_KEY_VALUE_ATTRS = {
    "LookupTableFindV2": ("Tin", "Tout"),
    "LookupTableExportV2": ("Tkeys", "Tvalues"),
}


def is_table_op(op: str) -> bool:
    """Whether ``op`` reads, writes or creates a lookup table."""
    return op in TABLE_READ_OPS or op in TABLE_STATE_OPS


def _output_of(node: str) -> Callable[[str], bool]:
    """Whether an input names an output of ``node`` (top-level ``node:i`` form)."""
    return lambda raw: raw.split(":")[0] == node


def _named(arg: str) -> Callable[[str], bool]:
    """Whether an input names the function argument ``arg``."""
    return lambda raw: raw == arg


def _uses(
    nodes: Sequence[Any], refers: Callable[[str], bool], library: dict[str, Any], depth: int = 0
) -> list[Any]:
    """The nodes that use a resource, through Identity ops and into called functions."""
    found: list[Any] = []
    for node in nodes:
        for index, raw in enumerate(node.input):
            if raw.startswith("^") or not refers(raw):
                continue
            if node.op == "Identity":
                name = node.name
                found += _uses(nodes, _output_of(name), library, depth)
            elif node.op in _CALLED and depth < 8:
                found += _uses_in_calls(node, index, library, depth)
            else:
                found.append(node)
    return found


def _uses_in_calls(node: Any, index: int, library: dict[str, Any], depth: int) -> list[Any]:
    found: list[Any] = []
    for attr, first in _CALLED[node.op]:
        value = node.attr[attr]
        names = [value.func.name] if value.HasField("func") else [f.name for f in value.list.func]
        for name in names:
            fdef = library.get(name)
            position = index - first
            if fdef is None or not 0 <= position < len(fdef.signature.input_arg):
                found.append(node)  # a call we cannot see into: not a plain table read
                continue
            arg = fdef.signature.input_arg[position].name
            found += _uses(fdef.node_def, _named(arg), library, depth + 1)
    return found


def table_dtypes(graph_def: Any, placeholder: str) -> tuple[Any, Any] | None:
    """Key and value dtypes if ``placeholder`` is a table handle only ever read; else ``None``.

    Raises:
        UnsupportedModelError: the graph writes to the table.
    """
    library = {f.signature.name: f for f in graph_def.library.function}
    uses = _uses(graph_def.node, _output_of(placeholder), library)
    writes = sorted({u.op for u in uses if u.op in TABLE_STATE_OPS})
    if writes:
        raise UnsupportedModelError(
            f"the function changes the lookup table {placeholder} ({', '.join(writes)}); "
            "a traced model is for inference: trace a function that only reads its tables",
            _PASS,
        )
    if not uses or any(u.op not in TABLE_READ_OPS for u in uses):
        return None
    for use in uses:
        if use.op in _KEY_VALUE_ATTRS:
            keys, values = _KEY_VALUE_ATTRS[use.op]
            return tf.as_dtype(use.attr[keys].type), tf.as_dtype(use.attr[values].type)
    return None


def rebuild(name: str, contents: tuple[Any, Any], dtypes: tuple[Any, Any]) -> Any:
    """A ``tf.lookup.StaticHashTable`` holding ``contents`` (a table's exported keys, values).

    Raises:
        UnsupportedModelError: a table of tensors, or one whose export repeats keys.
    """
    keys, values = contents
    if values.shape.rank != 1:
        raise UnsupportedModelError(
            f"the lookup table {name} maps keys to tensors of shape {values.shape[1:]}; only "
            "tables of scalars (StringLookup, IntegerLookup, tf.lookup.StaticHashTable ...) are "
            "supported",
            _PASS,
        )
    if len(np.unique(keys.numpy())) != int(keys.shape[0]):
        raise UnsupportedModelError(
            f"the lookup table {name} exports repeated keys (a dense hash table?); use "
            "tf.lookup.StaticHashTable or tf.lookup.experimental.MutableHashTable",
            _PASS,
        )
    initializer = tf.lookup.KeyValueTensorInitializer(keys, values)
    return tf.lookup.StaticHashTable(initializer, default_value=tf.zeros([], dtypes[1]))


def snapshot_tables(captures: Iterable[Any], graph_def: Any) -> dict[str, Any]:
    """Rebuild every table the frozen graph reads through a captured handle.

    Args:
        captures: the traced function's ``graph.captures`` (external, internal) pairs.
        graph_def: the frozen GraphDef, where each captured handle is a resource Placeholder.

    Returns:
        Placeholder tensor name → the rebuilt ``tf.lookup.StaticHashTable`` to feed there.

    Raises:
        UnsupportedModelError: a table that is written to, or that cannot be rebuilt.
    """
    handles = {internal.op.name: external for external, internal in captures}
    tables: dict[str, Any] = {}
    for node in graph_def.node:
        is_resource = node.op == "Placeholder" and node.attr["dtype"].type == types_pb2.DT_RESOURCE
        if not is_resource or node.name not in handles:
            continue
        dtypes = table_dtypes(graph_def, node.name)
        if dtypes is not None:
            handle = handles[node.name]
            contents = gen_lookup_ops.lookup_table_export_v2(handle, dtypes[0], dtypes[1])
            tables[f"{node.name}:0"] = rebuild(node.name, contents, dtypes)
    logger.debug("freeze: %d lookup tables carried as snapshots", len(tables))
    return tables
