"""``saved_model.pb`` as the service reads it: the one reader of ``kiln_client``, plus the op scan.

The decoding itself (signatures, dtypes, shapes) is :mod:`kiln_client._savedmodel`, shared with
the SDK; this adds, per signature, the file, network and host-escaping ops it reaches
(:mod:`._graph_scan`), including what the load-time init op runs.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field, replace

from kiln_client import _savedmodel as reader
from kiln_client._savedmodel import DTYPE_NAMES, MetaGraph, ProtoDecodeError, TensorSpec
from kiln_service._graph_scan import LOAD_TIME_ALLOWED, Finding, index_graph

__all__ = ["DTYPE_NAMES", "MetaGraph", "ProtoDecodeError", "Signature", "TensorSpec",
           "parse_saved_model"]

#: The signature under which ``tf.saved_model.save`` records the op run when the model loads.
INIT_OP_SIGNATURE = "__saved_model_init_op"


@dataclass
class Signature(reader.Signature):
    """One ``SignatureDef``, with what the op scan found in it."""

    forbidden: list[Finding] = field(default_factory=list)
    """File, network or host-escaping ops the signature reaches (see :mod:`._graph_scan`)."""


def _scan(meta: MetaGraph, graph_def: memoryview) -> None:
    """Replace each signature by one carrying its findings (and those of the load-time init op)."""
    graph = index_graph(graph_def)
    init = meta.signatures.get(INIT_OP_SIGNATURE)
    on_load = [] if init is None else [
        replace(f, node=f"{f.node} (runs when the model is loaded)")
        for f in graph.findings([t.name for t in init.outputs.values()])
        if f.op not in LOAD_TIME_ALLOWED
    ]
    for name, sig in meta.signatures.items():
        found = graph.findings([t.name for t in sig.outputs.values()]) + on_load
        meta.signatures[name] = _scanned(sig, found)


def _scanned(sig: reader.Signature, found: list[Finding]) -> Signature:
    return Signature(inputs=sig.inputs, outputs=sig.outputs, method_name=sig.method_name,
                     forbidden=found)


def parse_saved_model(data: bytes | bytearray | memoryview | mmap.mmap) -> list[MetaGraph]:
    """Decode the meta graphs of a ``saved_model.pb``, each signature scanned for forbidden ops.

    Args:
        data: The file's bytes (a memoryview of an mmap works and avoids a copy).

    Returns:
        The meta graphs, in file order; their signatures are :class:`Signature`\\ s.

    Raises:
        ProtoDecodeError: The bytes are not a SavedModel protobuf.
    """
    metas = reader.parse_saved_model(data, on_graph_def=_scan)
    for meta in metas:  # a meta graph without a graph has nothing to scan
        meta.signatures = {name: sig if isinstance(sig, Signature) else _scanned(sig, [])
                           for name, sig in meta.signatures.items()}
    return metas
