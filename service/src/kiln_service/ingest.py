"""Checks made on an upload before its job is queued, without TensorFlow.

* :func:`inspect_archive`: the model file is a real tar (optionally gzip) or zip archive whose
  members are all safe (regular files and folders only; no ``..``, absolute paths, links, devices
  or duplicates; capped count and declared size) and which holds one ``saved_model.pb`` at its
  root or one folder down.
* :func:`read_signatures`: decode that ``saved_model.pb`` (see :mod:`._savedmodel_proto`).
* :func:`check_example_inputs`: the ``.npz`` loads without pickle and its arrays fit the signature.
* :func:`check_input_shapes`: without example inputs, every unknown dimension but a leading batch
  dimension is given by ``input_shapes``.

Every rejection is an :class:`~kiln_service.errors.UploadRejectedError` (422) with a stable
``code`` and a message that says what to change.
"""

from __future__ import annotations

import logging
import mmap
import os
import shutil
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from kiln_service._savedmodel_proto import (
    MetaGraph,
    ProtoDecodeError,
    Signature,
    TensorSpec,
    parse_saved_model,
)
from kiln_service.errors import UploadRejectedError

__all__ = [
    "ArchiveInfo",
    "check_example_inputs",
    "check_input_shapes",
    "inspect_archive",
    "read_signatures",
    "select_signature",
]

logger = logging.getLogger(__name__)
SAVED_MODEL_PB = "saved_model.pb"
MAX_NAME_BYTES = 1024


@dataclass(frozen=True)
class ArchiveInfo:
    """What :func:`inspect_archive` found."""

    kind: str
    """``tar`` or ``zip``."""
    root: str
    """Folder of the SavedModel inside the archive (``""`` for the root)."""
    members: int
    """Number of entries."""
    total_bytes: int
    """Sum of the entries' declared sizes."""


def _reject(code: str, detail: str) -> UploadRejectedError:
    return UploadRejectedError(detail, code=code)


def _safe_name(raw: str) -> str:
    """Return a member name normalised (no ``./``, no trailing ``/``) or raise if unsafe."""
    if len(raw.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise _reject("unsafe_archive", f"archive member name longer than {MAX_NAME_BYTES} bytes")
    if raw.startswith("/") or raw.startswith("\\") or (len(raw) > 1 and raw[1] == ":"):
        raise _reject("unsafe_archive", f"archive member {raw!r} has an absolute path; "
                      "archive the SavedModel folder with relative paths")
    parts = [p for p in PurePosixPath(raw.replace("\\", "/")).parts if p not in ("", ".")]
    if ".." in parts:
        raise _reject("unsafe_archive", f"archive member {raw!r} points outside the archive ('..')")
    if any("\x00" in p for p in parts):
        raise _reject("unsafe_archive", f"archive member {raw!r} has a NUL byte in its name")
    return "/".join(parts)


def _tar_members(path: Path) -> list[tuple[str, bool, int]]:
    entries: list[tuple[str, bool, int]] = []
    with tarfile.open(path, mode="r:*") as tar:
        for member in tar:
            name = _safe_name(member.name)
            if member.issym() or member.islnk():
                raise _reject("unsafe_archive", f"archive member {member.name!r} is a link; "
                              "only regular files and folders are accepted")
            if not (member.isfile() or member.isdir()):
                raise _reject("unsafe_archive", f"archive member {member.name!r} is a device, "
                              "FIFO or other special file; only regular files and folders are accepted")
            entries.append((name, member.isdir(), member.size if member.isfile() else 0))
    return entries


def _zip_members(path: Path) -> list[tuple[str, bool, int]]:
    entries: list[tuple[str, bool, int]] = []
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            name = _safe_name(info.filename)
            # Unix type bits, when the zip was written on Unix; 0 (no type) means a plain file.
            mode = stat.S_IFMT(info.external_attr >> 16)
            if mode and stat.S_ISLNK(mode):
                raise _reject("unsafe_archive", f"archive member {info.filename!r} is a link; "
                              "only regular files and folders are accepted")
            if mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise _reject("unsafe_archive", f"archive member {info.filename!r} is a special file")
            entries.append((name, info.is_dir(), 0 if info.is_dir() else info.file_size))
    return entries


def _archive_kind(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    try:
        if tarfile.is_tarfile(path):
            return "tar"
    except (OSError, tarfile.TarError):
        pass
    raise _reject("invalid_archive", "the model file is not a tar, tar.gz or zip archive; "
                  "send the SavedModel folder as .tar.gz, .tgz, .tar or .zip")


def inspect_archive(path: Path, *, max_members: int, max_total_bytes: int) -> ArchiveInfo:
    """Check an uploaded model archive and locate its SavedModel.

    Args:
        path: The uploaded file.
        max_members: Most entries allowed.
        max_total_bytes: Largest total declared size of the entries.

    Returns:
        The archive's kind, SavedModel root, entry count and declared size.

    Raises:
        UploadRejectedError: Not an archive (``invalid_archive``), an unsafe member
            (``unsafe_archive``), over a cap (``archive_too_large``), or no single SavedModel
            at the root or one folder down (``no_saved_model``).
    """
    kind = _archive_kind(path)
    try:
        entries = _tar_members(path) if kind == "tar" else _zip_members(path)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        if isinstance(exc, UploadRejectedError):
            raise
        raise _reject("invalid_archive", f"the model archive is damaged or truncated ({exc})") from exc
    seen: set[str] = set()
    total = 0
    for name, is_dir, size in entries:
        if name in seen and not is_dir:
            raise _reject("unsafe_archive", f"archive member {name!r} appears twice")
        seen.add(name)
        total += size
    if len(entries) > max_members:
        raise _reject("archive_too_large", f"the archive has {len(entries)} entries; "
                      f"at most {max_members} are accepted")
    if total > max_total_bytes:
        raise _reject("archive_too_large", f"the archive's files add up to {total} bytes unpacked; "
                      f"at most {max_total_bytes} are accepted")
    return ArchiveInfo(kind=kind, root=_find_root(seen), members=len(entries), total_bytes=total)


def _find_root(names: set[str]) -> str:
    roots = sorted(
        n[: -len(SAVED_MODEL_PB)].rstrip("/") for n in names
        if n == SAVED_MODEL_PB or (n.endswith("/" + SAVED_MODEL_PB) and n.count("/") == 1)
    )
    if not roots:
        raise _reject("no_saved_model", "no saved_model.pb at the archive's root or one folder down; "
                      "archive the folder written by tf.saved_model.save / model.save")
    if len(roots) > 1:
        raise _reject("no_saved_model", "the archive holds several SavedModels "
                      f"({', '.join(r or '.' for r in roots)}); send one")
    return roots[0]


def read_signatures(path: Path, info: ArchiveInfo, *, scratch: Path) -> dict[str, Signature]:
    """Extract ``saved_model.pb`` to ``scratch`` and decode the serving meta graph's signatures.

    Args:
        path: The uploaded archive (already checked by :func:`inspect_archive`).
        info: What :func:`inspect_archive` returned.
        scratch: A private folder for the extracted file (removed by the caller).

    Returns:
        Signature name → signature (internal ``__…`` entries left out).

    Raises:
        UploadRejectedError: ``saved_model.pb`` cannot be decoded (``invalid_saved_model``).
    """
    member = f"{info.root}/{SAVED_MODEL_PB}" if info.root else SAVED_MODEL_PB
    target = scratch / SAVED_MODEL_PB
    _extract_member(path, info.kind, member, target)
    error: str | None = None
    with open(target, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            error = "empty file"
        else:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                # The message is kept, not the exception: its traceback would pin views of the
                # map and stop it from closing.
                try:
                    result = _pick_signatures(parse_saved_model(mm))
                except ProtoDecodeError as exc:
                    error = str(exc)
    if error is not None:
        raise _reject("invalid_saved_model", f"saved_model.pb is not a valid SavedModel ({error}); "
                      "save the model with tf.saved_model.save")
    return result


def _pick_signatures(metas: list[MetaGraph]) -> dict[str, Signature]:
    serving = [m for m in metas if "serve" in m.tags] or metas
    return {k: v for k, v in serving[0].signatures.items() if not k.startswith("__")}


def _extract_member(path: Path, kind: str, member: str, target: Path) -> None:
    try:
        if kind == "zip":
            with zipfile.ZipFile(path) as zf:
                name = next(i.filename for i in zf.infolist() if _safe_name(i.filename) == member)
                with zf.open(name) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1024 * 1024)
            return
        with tarfile.open(path, mode="r:*") as tar:
            for entry in tar:
                if entry.isfile() and _safe_name(entry.name) == member:
                    member_file = tar.extractfile(entry)
                    if member_file is None:
                        break
                    with member_file, open(target, "wb") as dst:
                        shutil.copyfileobj(member_file, dst, 1024 * 1024)
                    return
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise _reject("invalid_archive", f"could not read {member} from the archive ({exc})") from exc
    raise _reject("no_saved_model", f"could not read {member} from the archive")


def select_signature(signatures: dict[str, Signature], name: str) -> Signature:
    """Return the signature called ``name``.

    Raises:
        UploadRejectedError: ``unknown_signature``, listing the available ones.
    """
    if name not in signatures:
        available = ", ".join(sorted(signatures)) or "none"
        raise _reject("unknown_signature", f"the SavedModel has no signature {name!r}; "
                      f"available signatures: {available}")
    return signatures[name]




def _npy_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[tuple[int, ...], np.dtype[Any]]:
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    return tuple(int(d) for d in shape), np.dtype(dtype)


def _read_npz_headers(path: Path, max_array_bytes: int) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]:
    arrays: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy") or "/" in info.filename:
                    raise _reject("invalid_example_inputs", f"example_inputs holds {info.filename!r}, "
                                  "which is not an array; save the inputs with numpy.savez")
                shape, dtype = _npy_header(zf, info)
                key = info.filename[: -len(".npy")]
                if dtype.hasobject:
                    raise _reject("pickled_example_inputs", f"example input {key!r} is an object "
                                  "array, which would need pickle; send numeric, bool or string arrays")
                nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                if nbytes > max_array_bytes or info.file_size < nbytes:
                    raise _reject("invalid_example_inputs", f"example input {key!r} declares {nbytes} "
                                  f"bytes of data but the file holds {info.file_size} "
                                  f"(limit {max_array_bytes})")
                arrays[key] = (shape, dtype)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        if isinstance(exc, UploadRejectedError):
            raise
        raise _reject("invalid_example_inputs", "example_inputs is not a valid .npz file "
                      f"({exc}); write it with numpy.savez(path, **inputs)") from exc
    return arrays


def _dtype_fits(expected: str, actual: np.dtype[Any]) -> bool:
    if expected == "string":
        return bool(actual.kind in "SU")
    return str(actual.name) == expected


def check_example_inputs(path: Path, signature: Signature, *, max_array_bytes: int) -> dict[str, list[int]]:
    """Check an ``.npz`` of example inputs against a signature, reading only array headers.

    Args:
        path: The uploaded ``.npz``.
        signature: The signature to compile.
        max_array_bytes: Largest array allowed.

    Returns:
        Input name → shape of the array sent.

    Raises:
        UploadRejectedError: Not an .npz, object arrays (pickle), or names, dtypes, ranks or
            fixed dimensions that do not fit the signature.
    """
    arrays = _read_npz_headers(path, max_array_bytes)
    expected = signature.inputs
    missing, extra = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
    if missing or extra:
        parts = [f"missing {missing}" if missing else "", f"unexpected {extra}" if extra else ""]
        raise _reject("example_inputs_mismatch", "example_inputs does not match the signature's "
                      f"inputs {sorted(expected)}: " + "; ".join(p for p in parts if p))
    for name, (shape, dtype) in sorted(arrays.items()):
        spec = expected[name]
        if not _dtype_fits(spec.dtype, dtype):
            raise _reject("example_inputs_mismatch", f"example input {name!r} has dtype "
                          f"{dtype.name} but the signature expects {spec.dtype}")
        _check_shape(name, shape, spec, what="example input")
    return {name: list(shape) for name, (shape, _) in arrays.items()}


def _check_shape(name: str, shape: tuple[int, ...], spec: TensorSpec, *, what: str,
                 code: str = "example_inputs_mismatch") -> None:
    if spec.shape is None:
        return
    if len(shape) != len(spec.shape):
        raise _reject(code, f"{what} {name!r} has rank {len(shape)} "
                      f"(shape {list(shape)}) but the signature expects rank {len(spec.shape)} "
                      f"({_fmt(spec.shape)})")
    for i, (got, want) in enumerate(zip(shape, spec.shape, strict=True)):
        if want is not None and got != want:
            raise _reject(code, f"{what} {name!r} has size {got} in dimension "
                          f"{i} but the signature fixes it to {want} ({_fmt(spec.shape)})")


def _fmt(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("None" if d is None else str(d) for d in shape) + "]"


def check_input_shapes(signature: Signature, input_shapes: dict[str, list[int]] | None) -> None:
    """Check that inputs can be generated: every unknown dimension but a leading batch is given.

    Args:
        signature: The signature to compile.
        input_shapes: The ``input_shapes`` form field (name to shape), if sent.

    Raises:
        UploadRejectedError: ``input_shapes`` names an unknown input, gives a bad shape, or an
            input has an unknown dimension (beyond a leading batch) that it does not give.
    """
    given = input_shapes or {}
    unknown = sorted(set(given) - set(signature.inputs))
    if unknown:
        raise _reject("invalid_input_shapes", f"input_shapes names {unknown}, which the signature "
                      f"does not have; its inputs are {sorted(signature.inputs)}")
    for name, spec in sorted(signature.inputs.items()):
        if name in given:
            shape = given[name]
            if any(d < 1 for d in shape):
                raise _reject("invalid_input_shapes", f"input_shapes[{name!r}] = {shape}: every "
                              "dimension must be a positive integer")
            _check_shape(name, tuple(shape), spec, what="input_shapes for", code="invalid_input_shapes")
            continue
        if spec.shape is None:
            raise _reject("input_shape_required", f"input {name!r} has an unknown rank; give its "
                          "shape in input_shapes (JSON, name to shape) or send example_inputs")
        open_dims = [i for i, d in enumerate(spec.shape) if d is None and i > 0]
        if open_dims:
            raise _reject("input_shape_required", f"input {name!r} has shape {_fmt(spec.shape)} "
                          f"with unknown dimension(s) {open_dims}; give its shape in input_shapes "
                          "(JSON, name to shape) or send example_inputs")
