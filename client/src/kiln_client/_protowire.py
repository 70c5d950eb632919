"""Protocol-buffer wire-format primitives shared by the ``saved_model.pb`` decoders.

Reading the wire format directly keeps TensorFlow (and its generated protos) out of the API.
Length-delimited values are returned as ``memoryview`` slices, so skipping a large field costs
nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["LEN", "VARINT", "ProtoDecodeError", "fields", "message", "text", "varint"]

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
