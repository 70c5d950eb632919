"""A minimal decoder for ``saved_model.pb``: signatures, their inputs, dtypes and shapes.

The API must not import TensorFlow, and importing TensorFlow's generated protos
(``tensorflow.core.protobuf.saved_model_pb2``) runs ``tensorflow/__init__`` and loads the whole
runtime. So this module reads the protobuf wire format directly, touching only the few fields it
needs and skipping everything else (tensor contents, shapes and other attributes of the graph are
skipped in O(1), however large; the graph's ops are indexed by :mod:`._graph_scan`):

    SavedModel      2: repeated MetaGraphDef meta_graphs
    MetaGraphDef    1: MetaInfoDef meta_info_def (4: repeated string tags), 2: GraphDef graph_def
                    5: map<string, SignatureDef> signature_def
    SignatureDef    1: map<string, TensorInfo> inputs, 2: outputs, 3: string method_name
    TensorInfo      1: string name, 2: DataType dtype, 3: TensorShapeProto tensor_shape
    TensorShape     2: repeated Dim dim (1: int64 size), 3: bool unknown_rank
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field, replace

from kiln_client._protowire import LEN as _LEN
from kiln_client._protowire import VARINT as _VARINT
from kiln_client._protowire import ProtoDecodeError
from kiln_client._protowire import fields as _fields
from kiln_client._protowire import message as _message
from kiln_client._protowire import text as _text
from kiln_service._graph_scan import LOAD_TIME_ALLOWED, Finding, GraphIndex, index_graph

__all__ = ["DTYPE_NAMES", "MetaGraph", "ProtoDecodeError", "Signature", "TensorSpec", "parse_saved_model"]

#: The signature under which ``tf.saved_model.save`` records the op run when the model loads.
INIT_OP_SIGNATURE = "__saved_model_init_op"

#: TensorFlow ``DataType`` enum values and their numpy names.
DTYPE_NAMES: dict[int, str] = {
    1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string",
    8: "complex64", 9: "int64", 10: "bool", 11: "qint8", 12: "quint8", 13: "qint32",
    14: "bfloat16", 15: "qint16", 16: "quint16", 17: "uint16", 18: "complex128", 19: "float16",
    20: "resource", 21: "variant", 22: "uint32", 23: "uint64",
}

@dataclass(frozen=True)
class TensorSpec:
    """One signature input or output."""

    name: str
    """The graph tensor name (``serving_default_x:0``)."""
    dtype: str
    """numpy-style dtype name (``float32``), or ``unknown(<n>)``."""
    shape: tuple[int | None, ...] | None
    """Dimensions (``None`` unknown), or ``None`` when even the rank is unknown."""


@dataclass
class Signature:
    """One ``SignatureDef``."""

    inputs: dict[str, TensorSpec] = field(default_factory=dict)
    outputs: dict[str, TensorSpec] = field(default_factory=dict)
    method_name: str = ""
    forbidden: list[Finding] = field(default_factory=list)
    """File, network or host-escaping ops the signature reaches (see :mod:`._graph_scan`)."""


@dataclass
class MetaGraph:
    """One ``MetaGraphDef``: its tags and signatures."""

    tags: list[str] = field(default_factory=list)
    signatures: dict[str, Signature] = field(default_factory=dict)


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _shape(buf: memoryview) -> tuple[int | None, ...] | None:
    dims: list[int | None] = []
    unknown_rank = False
    for number, _, value in _fields(buf):
        if number == 2:
            size = 0  # proto3 omits a zero size
            for dnum, dwire, dval in _fields(_message(value)):
                if dnum == 1 and dwire == _VARINT and isinstance(dval, int):
                    size = _signed64(dval)
            dims.append(None if size < 0 else size)
        elif number == 3 and isinstance(value, int):
            unknown_rank = bool(value)
    return None if unknown_rank else tuple(dims)


def _tensor_info(buf: memoryview) -> TensorSpec:
    name, dtype, shape = "", "unknown(0)", None
    shape_seen = False
    for number, _, value in _fields(buf):
        if number == 1:
            name = _text(value)
        elif number == 2 and isinstance(value, int):
            dtype = DTYPE_NAMES.get(value, f"unknown({value})")
        elif number == 3:
            shape, shape_seen = _shape(_message(value)), True
    # A TensorInfo without a shape field has an unknown rank, like TensorShape(None).
    return TensorSpec(name=name, dtype=dtype, shape=shape if shape_seen else None)


def _map_entry(buf: memoryview) -> tuple[str, memoryview]:
    key, value = "", memoryview(b"")
    for number, _, item in _fields(buf):
        if number == 1:
            key = _text(item)
        elif number == 2:
            value = _message(item)
    return key, value


def _signature(buf: memoryview) -> Signature:
    sig = Signature()
    for number, _, value in _fields(buf):
        if number in (1, 2):
            key, info = _map_entry(_message(value))
            (sig.inputs if number == 1 else sig.outputs)[key] = _tensor_info(info)
        elif number == 3:
            sig.method_name = _text(value)
    return sig


def _meta_graph(buf: memoryview) -> MetaGraph:
    meta = MetaGraph()
    graph = None
    for number, _, value in _fields(buf):
        if number == 1:
            meta.tags.extend(_text(v) for n, _, v in _fields(_message(value)) if n == 4)
        elif number == 2:
            graph = index_graph(_message(value))
        elif number == 5:
            key, sig = _map_entry(_message(value))
            meta.signatures[key] = _signature(sig)
    if graph is not None:
        _scan(meta, graph)
    return meta


def _scan(meta: MetaGraph, graph: GraphIndex) -> None:
    """Set each signature's findings: what it reaches, plus what the load-time init op runs."""
    init = meta.signatures.get(INIT_OP_SIGNATURE)
    on_load = [] if init is None else [
        replace(f, node=f"{f.node} (runs when the model is loaded)")
        for f in graph.findings([t.name for t in init.outputs.values()])
        if f.op not in LOAD_TIME_ALLOWED
    ]
    for signature in meta.signatures.values():
        signature.forbidden = graph.findings([t.name for t in signature.outputs.values()]) + on_load


def parse_saved_model(data: bytes | bytearray | memoryview | mmap.mmap) -> list[MetaGraph]:
    """Decode the meta graphs (tags and signatures) of a ``saved_model.pb``.

    Args:
        data: The file's bytes (a memoryview of an mmap works and avoids a copy).

    Returns:
        The meta graphs, in file order.

    Raises:
        ProtoDecodeError: The bytes are not a SavedModel protobuf.
    """
    buf = memoryview(data)
    metas: list[MetaGraph] = []
    for number, wire, value in _fields(buf):
        if number == 2:
            if wire != _LEN:
                raise ProtoDecodeError("meta_graphs is not a message")
            metas.append(_meta_graph(_message(value)))
    if not metas:
        raise ProtoDecodeError("no meta graph found")
    return metas
