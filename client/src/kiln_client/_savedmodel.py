"""The one ``saved_model.pb`` reader: signatures, their inputs, dtypes and shapes; no TensorFlow.

Used by the SDK (the input names of a signature, to name example inputs) and by the service
(validating an upload, with the op scan of ``kiln_service._graph_scan`` hooked in through
``on_graph_def``). Importing TensorFlow's generated protos (``saved_model_pb2``) would load the
whole TensorFlow runtime, so this reads the protobuf wire format directly, touching only the
fields it needs and skipping everything else in O(1) (tensor contents, shapes and attributes of
the graph are never copied: length-delimited values are ``memoryview`` slices). The tests check
it against TensorFlow's own protobuf classes on real models, and fuzz it: any input gives a
result or :class:`ProtoDecodeError`, never another exception or a hang (every step advances).

    SavedModel      2: repeated MetaGraphDef meta_graphs
    MetaGraphDef    1: MetaInfoDef meta_info_def (4: repeated string tags), 2: GraphDef graph_def
                    5: map<string, SignatureDef> signature_def
    SignatureDef    1: map<string, TensorInfo> inputs, 2: outputs, 3: string method_name
    TensorInfo      1: string name, 2: DataType dtype, 3: TensorShapeProto tensor_shape
    TensorShape     2: repeated Dim dim (1: int64 size), 3: bool unknown_rank
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

__all__ = [
    "DTYPE_NAMES",
    "LEN",
    "VARINT",
    "MetaGraph",
    "ProtoDecodeError",
    "Signature",
    "TensorSpec",
    "fields",
    "message",
    "parse_saved_model",
    "signature_inputs",
    "text",
    "varint",
]

VARINT, _I64, LEN, _I32 = 0, 1, 2, 5


class ProtoDecodeError(ValueError):
    """The bytes are not a well-formed SavedModel protobuf."""


def varint(buf: memoryview, pos: int) -> tuple[int, int]:
    """Decode a base-128 varint at ``pos``; return it and the position after it."""
    result, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise ProtoDecodeError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtoDecodeError("varint too long")


def fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """Yield ``(field number, wire type, value)``; length-delimited values as views (no copy)."""
    pos = 0
    while pos < len(buf):
        key, pos = varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtoDecodeError("field number 0")
        if wire == VARINT:
            value, pos = varint(buf, pos)
            yield number, wire, value
        elif wire == LEN:
            length, pos = varint(buf, pos)
            if pos + length > len(buf):
                raise ProtoDecodeError("truncated length-delimited field")
            yield number, wire, buf[pos : pos + length]
            pos += length
        elif wire in (_I64, _I32):
            size = 8 if wire == _I64 else 4
            if pos + size > len(buf):
                raise ProtoDecodeError("truncated fixed-width field")
            yield number, wire, int.from_bytes(buf[pos : pos + size], "little")
            pos += size
        else:
            raise ProtoDecodeError(f"unsupported wire type {wire}")


def text(value: int | memoryview) -> str:
    """Decode a length-delimited field as UTF-8 text."""
    if not isinstance(value, memoryview):
        raise ProtoDecodeError("expected a string field")
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtoDecodeError("string field is not UTF-8") from exc


def message(value: int | memoryview) -> memoryview:
    """Return a length-delimited field as a sub-message view (refusing a scalar)."""
    if not isinstance(value, memoryview):
        raise ProtoDecodeError("expected a sub-message")
    return value


# -- the SavedModel messages --------------------------------------------------------------------

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


@dataclass
class MetaGraph:
    """One ``MetaGraphDef``: its tags and signatures."""

    tags: list[str] = field(default_factory=list)
    signatures: dict[str, Signature] = field(default_factory=dict)


#: called once per meta graph that has a graph, with the ``GraphDef`` bytes (a view: valid only
#: during the call)
GraphDefHook = Callable[[MetaGraph, memoryview], None]


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _shape(buf: memoryview) -> tuple[int | None, ...] | None:
    dims: list[int | None] = []
    unknown_rank = False
    for number, _, value in fields(buf):
        if number == 2:
            size = 0  # proto3 omits a zero size
            for dnum, dwire, dval in fields(message(value)):
                if dnum == 1 and dwire == VARINT and isinstance(dval, int):
                    size = _signed64(dval)
            dims.append(None if size < 0 else size)
        elif number == 3 and isinstance(value, int):
            unknown_rank = bool(value)
    return None if unknown_rank else tuple(dims)


def _tensor_info(buf: memoryview) -> TensorSpec:
    name, dtype, shape = "", "unknown(0)", None
    shape_seen = False
    for number, _, value in fields(buf):
        if number == 1:
            name = text(value)
        elif number == 2 and isinstance(value, int):
            dtype = DTYPE_NAMES.get(value, f"unknown({value})")
        elif number == 3:
            shape, shape_seen = _shape(message(value)), True
    # A TensorInfo without a shape field has an unknown rank, like TensorShape(None).
    return TensorSpec(name=name, dtype=dtype, shape=shape if shape_seen else None)


def _map_entry(buf: memoryview) -> tuple[str, memoryview]:
    key, value = "", memoryview(b"")
    for number, _, item in fields(buf):
        if number == 1:
            key = text(item)
        elif number == 2:
            value = message(item)
    return key, value


def _signature(buf: memoryview) -> Signature:
    sig = Signature()
    for number, _, value in fields(buf):
        if number in (1, 2):
            key, info = _map_entry(message(value))
            (sig.inputs if number == 1 else sig.outputs)[key] = _tensor_info(info)
        elif number == 3:
            sig.method_name = text(value)
    return sig


def _meta_graph(buf: memoryview, on_graph_def: GraphDefHook | None) -> MetaGraph:
    meta = MetaGraph()
    graph_def: memoryview | None = None
    for number, _, value in fields(buf):
        if number == 1:
            meta.tags.extend(text(v) for n, _, v in fields(message(value)) if n == 4)
        elif number == 2:
            graph_def = message(value)
        elif number == 5:
            key, sig = _map_entry(message(value))
            meta.signatures[key] = _signature(sig)
    if graph_def is not None and on_graph_def is not None:
        on_graph_def(meta, graph_def)
    return meta


def parse_saved_model(
    data: bytes | bytearray | memoryview | mmap.mmap, *, on_graph_def: GraphDefHook | None = None
) -> list[MetaGraph]:
    """Decode the meta graphs (tags and signatures) of a ``saved_model.pb``.

    Args:
        data: The file's bytes (a memoryview of an mmap works and avoids a copy).
        on_graph_def: Called with each meta graph (signatures read) and its ``GraphDef`` bytes,
            for a caller that inspects the graph (the service's op scan). The view is only valid
            during the call and must not be kept (an mmap could not be closed).

    Returns:
        The meta graphs, in file order.

    Raises:
        ProtoDecodeError: The bytes are not a SavedModel protobuf.
    """
    buf = memoryview(data)
    metas: list[MetaGraph] = []
    for number, wire, value in fields(buf):
        if number == 2:
            if wire != LEN:
                raise ProtoDecodeError("meta_graphs is not a message")
            metas.append(_meta_graph(message(value), on_graph_def))
    if not metas:
        raise ProtoDecodeError("no meta graph found")
    return metas


def signature_inputs(data: bytes | bytearray | memoryview) -> dict[str, list[str]]:
    """Each signature key of a ``saved_model.pb`` → its input names, sorted as TensorFlow lists a
    signature's keyword inputs (over all meta graphs; the last one wins on a repeated key).

    Raises:
        ProtoDecodeError: The bytes are not a SavedModel protobuf.
    """
    return {key: sorted(sig.inputs)
            for meta in parse_saved_model(data) for key, sig in meta.signatures.items()}
