"""The example-inputs ``.npz``: one array per signature input, named after the input.

NumPy has no variable-length byte string. A ``tf.string`` value stored in a fixed-width ``S``
array loses its trailing NUL bytes (``np.array([b"ab\\x00"])[0] == b"ab"``), and a serialized
``tf.Example`` can end in one. So beside each string input given as Python or TensorFlow strings
(an object array, as ``tf.Tensor.numpy()`` returns), the SDK stores its values' byte lengths as
``LENGTHS_PREFIX + name`` (int64, the input's shape); the service checks them and the compile
child restores each value whole. An ``.npz`` without lengths reads as NumPy reads it.

Used by the SDK (writing), the service's upload check and the worker (reading): one format.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

#: Key prefix of a string input's lengths array in the ``.npz``.
LENGTHS_PREFIX = "__kiln_lengths__."


def encode(name: str, array: np.ndarray) -> dict[str, np.ndarray]:
    """The arrays the ``.npz`` holds for input ``name``: an object array of ``bytes`` or ``str``
    becomes fixed-width bytes (``str`` as UTF-8) with its lengths; any other array as it is.

    Raises:
        ValueError: an object array holding anything but strings (no pickle is written).
    """
    if array.dtype != object:
        return {name: array}
    flat = [_as_bytes(name, value) for value in array.reshape(-1)]
    width = max([1, *(len(value) for value in flat)])
    fixed = np.array(flat, dtype=f"S{width}").reshape(array.shape)
    lengths = np.array([len(value) for value in flat], dtype=np.int64).reshape(array.shape)
    return {name: fixed, LENGTHS_PREFIX + name: lengths}


def _as_bytes(name: str, value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise ValueError(
        f"example input {name!r} holds a {type(value).__name__} among other values (ragged or "
        "mixed?); pass a numpy array or tensor of one dtype"
    )


def split(arrays: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``arrays`` (name to array, or to header) as the inputs and, by input name, their lengths."""
    inputs = {k: v for k, v in arrays.items() if not k.startswith(LENGTHS_PREFIX)}
    lengths = {k[len(LENGTHS_PREFIX):]: v for k, v in arrays.items() if k.startswith(LENGTHS_PREFIX)}
    return inputs, lengths


def lengths_problem(name: str, values: tuple[tuple[int, ...], np.dtype[Any]],
                    lengths: tuple[tuple[int, ...], np.dtype[Any]]) -> str | None:
    """Why the lengths of input ``name`` do not fit its values (``None``: they fit), from each
    array's shape and dtype: int64 lengths of the values' shape, for a bytes array."""
    (shape, dtype), (lengths_shape, lengths_dtype) = values, lengths
    if dtype.kind != "S":
        return f"the lengths {LENGTHS_PREFIX}{name} are for a bytes input; {name!r} is {dtype.name}"
    if lengths_dtype != np.dtype(np.int64) or tuple(lengths_shape) != tuple(shape):
        return (f"the lengths {LENGTHS_PREFIX}{name} must be int64 of shape {list(shape)}, "
                f"not {lengths_dtype.name} of shape {list(lengths_shape)}")
    return None


def decode(name: str, array: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``array``'s values (fixed-width bytes) restored to their ``lengths``: an object array.

    Raises:
        ValueError: lengths that do not fit the array (see :func:`lengths_problem`), or a length
            beyond the array's width or below a value's stored bytes.
    """
    problem = lengths_problem(name, (array.shape, array.dtype), (lengths.shape, lengths.dtype))
    if problem:
        raise ValueError(problem)
    width = array.dtype.itemsize
    restored = np.empty(array.shape, dtype=object)
    for index, value in np.ndenumerate(array):
        length = int(lengths[index])
        if not len(value) <= length <= width:
            raise ValueError(f"example input {name!r}: length {length} at {list(index)} does not "
                             f"fit its value of {len(value)} bytes (width {width})")
        restored[index] = bytes(value).ljust(length, b"\0")
    return restored
