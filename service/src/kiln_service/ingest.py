"""Checks made on an upload before its job is queued, without TensorFlow.

* :func:`inspect_archive`: the model file is a real tar (optionally gzip) or zip archive whose
  members are all safe (regular files and folders only; no ``..``, absolute paths, links, devices
  or duplicates; capped count and declared size) and which holds one ``saved_model.pb`` at its
  root or one folder down. The same read digests the SavedModel's files (the compile cache's
  key) and copies out its ``saved_model.pb``: a compressed archive is decompressed once.
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
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import numpy as np

from kiln_client import example_inputs
from kiln_client.digest import SAVED_MODEL_PB, ContentDigest, saved_model_root
from kiln_service._archive import Tally, archive_kind, reject, tar_members, zip_members
from kiln_service._graph_scan import FORBIDDEN_OPS
from kiln_service._npz import read_npz_headers
from kiln_service._savedmodel_proto import (
    MetaGraph,
    ProtoDecodeError,
    Signature,
    TensorSpec,
    parse_saved_model,
)
from kiln_service.errors import UploadRejectedError
from kiln_service.uploads import is_disk_full

__all__ = [
    "ArchiveInfo",
    "check_example_inputs",
    "check_input_shapes",
    "inspect_archive",
    "read_signatures",
    "select_signature",
]

logger = logging.getLogger(__name__)
_SHOWN_FINDINGS = 5


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
    digest: str
    """The SavedModel's content digest (:mod:`kiln_client.digest`), keying the compile cache."""
    saved_model_pb: Path
    """Its ``saved_model.pb``, copied into the scratch folder during the same pass."""


class _Pass:
    """What one read of the archive keeps: every file's sha256, and each candidate
    ``saved_model.pb`` (at the root or one folder down) copied into ``scratch``."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.digest = ContentDigest()
        self.pbs: dict[str, Path] = {}

    def read(self, name: str, contents: IO[bytes]) -> None:
        if not saved_model_root([name]):
            self.digest.add(name, contents)
            return
        target = self.scratch / f"{len(self.pbs)}-{SAVED_MODEL_PB}"
        with open(target, "wb") as copy:
            self.digest.add(name, contents, copy_to=copy)
        self.pbs[name] = target


def inspect_archive(path: Path, *, max_members: int, max_total_bytes: int,
                    scratch: Path) -> ArchiveInfo:
    """Check an uploaded model archive, locate its SavedModel and digest it, in one read.

    Every entry is checked from its header before its contents are read (for a zip, every
    entry from the central directory first): the caps, names, types and duplicates are judged
    as the entries are listed. The same pass hashes each file (the content digest) and copies
    ``saved_model.pb`` to ``scratch`` for :func:`read_signatures`, so a compressed archive is
    decompressed once.

    Args:
        path: The uploaded file.
        max_members: Most entries allowed.
        max_total_bytes: Largest total declared size of the entries.
        scratch: An existing private folder (removed by the caller).

    Returns:
        The archive's kind, SavedModel root, entry count, declared size, content digest and
        the copy of its ``saved_model.pb``.

    Raises:
        UploadRejectedError: Not an archive (``invalid_archive``), an unsafe member
            (``unsafe_archive``), over a cap (``archive_too_large``), or no single SavedModel
            at the root or one folder down (``no_saved_model``).
    """
    kind = archive_kind(path)
    tally = Tally(max_members=max_members, max_total_bytes=max_total_bytes)
    read = _Pass(scratch)
    try:
        (tar_members if kind == "tar" else zip_members)(path, tally, read.read)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        if isinstance(exc, UploadRejectedError) or is_disk_full(exc):
            raise  # a disk-full copy is the server's fault: the route answers 507
        raise reject("invalid_archive", f"the model archive is damaged or truncated ({exc})") from exc
    root = _find_root(tally.files)
    return ArchiveInfo(kind=kind, root=root, members=tally.count, total_bytes=tally.total,
                       digest=read.digest.hexdigest(root),
                       saved_model_pb=read.pbs[f"{root}/{SAVED_MODEL_PB}" if root else SAVED_MODEL_PB])


def _find_root(names: set[str]) -> str:
    roots = saved_model_root(names)
    if not roots:
        raise reject("no_saved_model", "no saved_model.pb at the archive's root or one folder down; "
                      "archive the folder written by tf.saved_model.save / model.save")
    if len(roots) > 1:
        raise reject("no_saved_model", "the archive holds several SavedModels "
                      f"({', '.join(r or '.' for r in roots)}); send one")
    return roots[0]


def read_signatures(info: ArchiveInfo) -> dict[str, Signature]:
    """Decode the signatures of the serving meta graph of the archive's ``saved_model.pb``.

    Args:
        info: What :func:`inspect_archive` returned (its copy of ``saved_model.pb``).

    Returns:
        Signature name → signature (internal ``__…`` entries left out).

    Raises:
        UploadRejectedError: ``saved_model.pb`` cannot be decoded (``invalid_saved_model``).
    """
    error: str | None = None
    with open(info.saved_model_pb, "rb") as f:
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
        raise reject("invalid_saved_model", f"saved_model.pb is not a valid SavedModel ({error}); "
                      "save the model with tf.saved_model.save")
    return result


def _pick_signatures(metas: list[MetaGraph]) -> dict[str, Signature]:
    serving = [m for m in metas if "serve" in m.tags] or metas
    # parse_saved_model gives the scanning Signature subclass for every signature
    return {k: cast(Signature, v) for k, v in serving[0].signatures.items()
            if not k.startswith("__")}


def select_signature(signatures: dict[str, Signature], name: str) -> Signature:
    """Return the signature called ``name``, refusing it if it reaches file or network ops.

    Raises:
        UploadRejectedError: ``unknown_signature``, listing the available ones; ``forbidden_ops``
            when the signature's graph runs file, network or host-escaping ops.
    """
    if name not in signatures:
        if not signatures:  # e.g. tf.saved_model.save(module) of a tf.function without one
            raise reject("unknown_signature", f"the SavedModel has no signatures, so Kiln cannot "
                         f"tell what to compile; save it with one, e.g. tf.saved_model.save(model, "
                         f"path, signatures={{{name!r}: model.__call__.get_concrete_function("
                         f"tf.TensorSpec([None, ...], tf.float32))}}), or with "
                         f"@tf.function(input_signature=[...]) on the function to serve")
        available = ", ".join(sorted(signatures))
        raise reject("unknown_signature", f"the SavedModel has no signature {name!r}; "
                      f"available signatures: {available}")
    signature = signatures[name]
    if signature.forbidden:
        raise _forbidden_ops(name, signature)
    return signature


def _forbidden_ops(name: str, signature: Signature) -> UploadRejectedError:
    # The ops known to reach outside the process first, then those only missing from the list.
    findings = sorted(signature.forbidden, key=lambda f: f.op not in FORBIDDEN_OPS)
    known = sorted({f.op for f in findings if f.op in FORBIDDEN_OPS})
    ops = known + sorted({f.op for f in findings} - set(known))
    shown = "; ".join(f"{f.op} at {f.node} ({f.reason})" for f in findings[:_SHOWN_FINDINGS])
    more = f"; and {len(findings) - _SHOWN_FINDINGS} more" if len(findings) > _SHOWN_FINDINGS else ""
    logger.info("signature %s refused: forbidden ops %s", name, ops)
    return reject("forbidden_ops", f"signature {name!r} runs ops that are not allowed: "
                   f"{', '.join(ops)}. Found: {shown}{more}. For safety, Kiln refuses models whose "
                   "serving graph reads or writes files, uses the network or runs Python, and op "
                   "types not on its list of allowed ops (see docs/errors.md#forbidden_ops); "
                   "remove these ops from the serving function (load data outside the model) and "
                   "save again")


def _dtype_fits(expected: str, actual: np.dtype[Any]) -> bool:
    if expected == "string":
        return bool(actual.kind in "SU")
    if expected == "bfloat16":  # numpy writes bfloat16 (ml_dtypes) arrays as 2-byte void records
        return str(actual.name) == "bfloat16" or (actual.kind == "V" and actual.itemsize == 2)
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
    arrays, lengths = example_inputs.split(read_npz_headers(path, max_array_bytes))
    expected = signature.inputs
    missing, extra = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
    if missing or extra:
        parts = [f"missing {missing}" if missing else "", f"unexpected {extra}" if extra else ""]
        hint = ""
        if any(name.startswith("arr_") for name in extra):
            keywords = ", ".join(f"{name}=..." for name in sorted(expected))
            hint = (f". np.savez(path, array) names arrays arr_0, arr_1, ...; name each after "
                    f"its input instead: np.savez(path, {keywords})")
        raise reject("example_inputs_mismatch", "example_inputs does not match the signature's "
                      f"inputs {sorted(expected)}: " + "; ".join(p for p in parts if p) + hint)
    for name, (shape, dtype) in sorted(arrays.items()):
        spec = expected[name]
        if not _dtype_fits(spec.dtype, dtype):
            raise reject("example_inputs_mismatch", f"example input {name!r} has dtype "
                          f"{dtype.name} but the signature expects {spec.dtype}")
        _check_shape(name, shape, spec, what="example input")
    for name, header in sorted(lengths.items()):
        problem = (f"{example_inputs.LENGTHS_PREFIX}{name} gives lengths for {name!r}, which "
                   "is not an input" if name not in arrays
                   else example_inputs.lengths_problem(name, arrays[name], header))
        if problem:
            raise reject("example_inputs_mismatch", problem)
    return {name: list(shape) for name, (shape, _) in arrays.items()}


def _check_shape(name: str, shape: tuple[int, ...], spec: TensorSpec, *, what: str,
                 code: str = "example_inputs_mismatch") -> None:
    if spec.shape is None:
        return
    if len(shape) != len(spec.shape):
        raise reject(code, f"{what} {name!r} has rank {len(shape)} "
                      f"(shape {list(shape)}) but the signature expects rank {len(spec.shape)} "
                      f"({_fmt(spec.shape)})")
    for i, (got, want) in enumerate(zip(shape, spec.shape, strict=True)):
        if want is not None and got != want:
            raise reject(code, f"{what} {name!r} has size {got} in dimension "
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
        raise reject("invalid_input_shapes", f"input_shapes names {unknown}, which the signature "
                      f"does not have; its inputs are {sorted(signature.inputs)}")
    for name, spec in sorted(signature.inputs.items()):
        if name in given:
            shape = given[name]
            if any(d < 1 for d in shape):
                raise reject("invalid_input_shapes", f"input_shapes[{name!r}] = {shape}: every "
                              "dimension must be a positive integer")
            _check_shape(name, tuple(shape), spec, what="input_shapes for", code="invalid_input_shapes")
            continue
        if spec.shape is None:
            raise reject("input_shape_required", f"input {name!r} has an unknown rank; give its "
                          "shape in input_shapes (JSON, name to shape) or send example_inputs")
        open_dims = [i for i, d in enumerate(spec.shape) if d is None and i > 0]
        if open_dims:
            raise reject("input_shape_required", f"input {name!r} has shape {_fmt(spec.shape)} "
                          f"with unknown dimension(s) {open_dims}; give its shape in input_shapes "
                          "(JSON, name to shape) or send example_inputs")
