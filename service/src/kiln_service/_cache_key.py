"""The compile cache's keys: what a compile's outcome depends on, digested.

A key has two halves. The *request key* is computed by the API from the upload and the form:
the SavedModel's content digest (each file's path relative to the SavedModel folder and its
bytes, so tar order, mtimes, owners and .zip vs .tar.gz do not matter), the example inputs'
digest (each array's name and ``.npy`` bytes, not the ``.npz`` container's timestamps) or the
generated inputs' shapes, the canonical flags, target, signature, placement and Kiln's key
version. The *toolchain* is what the workers advertise for the target in the worker registry
(``workers.toolchains``: kiln-worker, TensorFlow, tf-keras and the backend's versions, and the
worker's default placement). :func:`entry_key` joins the two: the API looks up the entry keys of
the toolchains live workers advertise, and a finished job is cached under the toolchain of the
worker that compiled it.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from kiln_client.flags import parse_flags
from kiln_client.manifest import combine_file_digests
from kiln_client.models import CompileRequest
from kiln_service._archive import open_tar, safe_name, zip_member_name

__all__ = ["KEY_VERSION", "entry_key", "inputs_digest", "model_digest", "request_key"]

#: bumped when what a compile depends on changes in a way the other parts do not show
KEY_VERSION = 1
_CHUNK = 1024 * 1024


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _file_digest(handle: IO[bytes]) -> bytes:
    digest = hashlib.sha256()
    for block in iter(lambda: handle.read(_CHUNK), b""):
        digest.update(block)
    return digest.digest()


def model_digest(path: Path, *, kind: str, root: str) -> str:
    """The content digest of the SavedModel in an (already checked) archive.

    Args:
        path: The archive.
        kind: ``tar`` or ``zip`` (``ingest.ArchiveInfo.kind``).
        root: The SavedModel's folder in the archive (``""`` for the archive's root).

    Returns:
        :func:`kiln_client.manifest.combine_file_digests` over the files under ``root``, named
        relative to it: the manifest's ``content_sha256`` of the same folder.
    """
    head = f"{root}/" if root else ""
    files: dict[str, bytes] = {}
    if kind == "zip":
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                name = safe_name(zip_member_name(info))
                if not info.is_dir() and name.startswith(head):
                    with zf.open(info) as member:
                        files[name[len(head):]] = _file_digest(member)
        return combine_file_digests(files)
    with open_tar(path) as tar:
        for entry in tar:
            name = safe_name(entry.name)
            if entry.isfile() and name.startswith(head):
                extracted = tar.extractfile(entry)
                if extracted is not None:
                    with extracted:
                        files[name[len(head):]] = _file_digest(extracted)
    return combine_file_digests(files)


def inputs_digest(path: Path) -> str:
    """The digest of an ``.npz`` of example inputs: each array's name and ``.npy`` bytes.

    The container's own bytes are not used: ``numpy.savez`` stamps each member with the time it
    was written, so the same arrays saved twice differ there.
    """
    files: dict[str, bytes] = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.is_dir():
                with zf.open(info) as member:
                    files[info.filename] = _file_digest(member)
    return combine_file_digests(files)


def request_key(req: CompileRequest, *, model: str, inputs: str | None) -> str:
    """The request half of a cache key (stored as ``jobs.cache_key``).

    Args:
        req: The validated form fields (flags already checked).
        model: :func:`model_digest` of the upload.
        inputs: :func:`inputs_digest` of the example inputs, ``None`` when generated from
            ``req.input_shapes``.

    Returns:
        A sha256 hex digest.
    """
    placement = req.placement.model_dump(mode="json") if req.placement is not None else None
    parts = {
        "v": KEY_VERSION, "model": model, "inputs": inputs, "input_shapes": req.input_shapes,
        "flags": parse_flags(req.flags).to_string(), "target": req.target,
        "signature": req.signature, "placement": placement,
    }
    return hashlib.sha256(_canonical(parts)).hexdigest()


def entry_key(request: str, toolchain: Mapping[str, str]) -> str:
    """The key of a cache entry: a request key compiled with one toolchain.

    Args:
        request: :func:`request_key`.
        toolchain: The versions a worker advertises for the job's target.

    Returns:
        A sha256 hex digest.
    """
    return hashlib.sha256(_canonical({"request": request, "toolchain": dict(toolchain)})).hexdigest()
