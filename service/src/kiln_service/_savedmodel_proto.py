"""A minimal decoder for ``saved_model.pb``: signatures, their inputs, dtypes and shapes.

The API must not import TensorFlow, and importing TensorFlow's generated protos
(``tensorflow.core.protobuf.saved_model_pb2``) runs ``tensorflow/__init__`` and loads the whole
runtime. So this module reads the protobuf wire format directly, touching only the few fields it
needs and skipping everything else (the graph itself is skipped in O(1), however large):

    SavedModel      2: repeated MetaGraphDef meta_graphs
    MetaGraphDef    1: MetaInfoDef meta_info_def (4: repeated string tags)
                    5: map<string, SignatureDef> signature_def
    SignatureDef    1: map<string, TensorInfo> inputs, 2: outputs, 3: string method_name
    TensorInfo      1: string name, 2: DataType dtype, 3: TensorShapeProto tensor_shape
    TensorShape     2: repeated Dim dim (1: int64 size), 3: bool unknown_rank
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["DTYPE_NAMES", "MetaGraph", "ProtoDecodeError", "Signature", "TensorSpec", "parse_saved_model"]

#: TensorFlow ``DataType`` enum values and their numpy names.
DTYPE_NAMES: dict[int, str] = {
    1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string",
    8: "complex64", 9: "int64", 10: "bool", 11: "qint8", 12: "quint8", 13: "qint32",
    14: "bfloat16", 15: "qint16", 16: "quint16", 17: "uint16", 18: "complex128", 19: "float16",
    20: "resource", 21: "variant", 22: "uint32", 23: "uint64",
}

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class ProtoDecodeError(ValueError):
    """The bytes are not a well-formed SavedModel protobuf."""


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


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
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


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """Yield ``(field number, wire type, value)``; length-delimited values as views (no copy)."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtoDecodeError("field number 0")
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
            yield number, wire, value
        elif wire == _LEN:
            length, pos = _varint(buf, pos)
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


def _text(value: int | memoryview) -> str:
    if not isinstance(value, memoryview):
        raise ProtoDecodeError("expected a string field")
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtoDecodeError("string field is not UTF-8") from exc


def _message(value: int | memoryview) -> memoryview:
    if not isinstance(value, memoryview):
        raise ProtoDecodeError("expected a sub-message")
    return value


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
    for number, _, value in _fields(buf):
        if number == 1:
            meta.tags.extend(_text(v) for n, _, v in _fields(_message(value)) if n == 4)
        elif number == 5:
            key, sig = _map_entry(_message(value))
            meta.signatures[key] = _signature(sig)
    return meta


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
