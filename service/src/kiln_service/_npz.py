"""Read an ``.npz`` of example inputs from its headers only: no pickle, no array data.

Every zip member is checked like an archive member (name, encryption, declared size ratio), then
each ``.npy`` header gives shape and dtype, and the sizes they imply are capped before anything
else is read.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from kiln_service._archive import check_zip_info, reject

__all__ = ["MAX_NPZ_ARRAYS", "read_npz_headers"]

MAX_NPZ_ARRAYS = 1024


def _npy_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[tuple[int, ...], np.dtype[Any]]:
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        try:
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except Exception as exc:  # numpy's header parser raises many types on hostile input
            raise ValueError(f"unreadable header of {info.filename!r}: {type(exc).__name__}: "
                             f"{exc}") from exc
    return tuple(int(d) for d in shape), np.dtype(dtype)


def read_npz_headers(path: Path, max_array_bytes: int) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]:
    """Return array name → (shape, dtype) of an ``.npz``, from its headers only.

    Args:
        path: The uploaded ``.npz``.
        max_array_bytes: Cap on each array and on all of them together.

    Returns:
        The arrays' shapes and dtypes.

    Raises:
        UploadRejectedError: Not an ``.npz``, object (pickled) arrays, unsafe members, sizes
            over the cap or larger than the data present.
    """
    arrays: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {}
    total = 0
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_NPZ_ARRAYS:
                raise reject("invalid_example_inputs", f"example_inputs holds {len(infos)} "
                              f"entries; at most {MAX_NPZ_ARRAYS} arrays are accepted")
            for info in infos:
                key, shape, dtype, nbytes = _npz_member(zf, info, max_array_bytes)
                if key in arrays:
                    raise reject("invalid_example_inputs", f"example input {key!r} appears twice "
                                  "in example_inputs; each array must appear once")
                total += nbytes
                if total > max_array_bytes:
                    raise reject("invalid_example_inputs", "the example inputs add up to more "
                                  f"than {max_array_bytes} bytes (from their headers)")
                arrays[key] = (shape, dtype)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, SyntaxError) as exc:
        raise reject("invalid_example_inputs", "example_inputs is not a valid .npz file "
                      f"({exc}); write it with numpy.savez(path, **inputs)") from exc
    return arrays


def _npz_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo,
                max_array_bytes: int) -> tuple[str, tuple[int, ...], np.dtype[Any], int]:
    """Check one ``.npy`` member from its zip entry and its header, before any data is read."""
    name = info.filename
    if not name.endswith(".npy") or "/" in name or "\\" in name or "\x00" in name:
        raise reject("invalid_example_inputs", f"example_inputs holds {name[:200]!r}, "
                      "which is not an array; save the inputs with numpy.savez")
    check_zip_info(info)
    shape, dtype = _npy_header(zf, info)
    key = name[: -len(".npy")]
    if dtype.hasobject:
        raise reject("pickled_example_inputs", f"example input {key!r} is an object "
                      "array, which would need pickle; send numeric, bool or string arrays")
    if any(d < 0 for d in shape):
        raise reject("invalid_example_inputs", f"example input {key!r} declares a negative "
                      f"dimension {list(shape)}")
    # Python integers: a product of huge dimensions must not wrap around as int64 would.
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > max_array_bytes or info.file_size < nbytes:
        raise reject("invalid_example_inputs", f"example input {key!r} declares {nbytes} "
                      f"bytes of data but the file holds {info.file_size} "
                      f"(limit {max_array_bytes})")
    return key, shape, dtype, nbytes
