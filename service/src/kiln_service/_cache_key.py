"""The compile cache's keys: what a compile's outcome depends on, digested.

A key has two halves. The *request key* is computed by the API from the upload and the form:
the SavedModel's content digest (:mod:`kiln_client.digest`: each file's path relative to the
SavedModel folder and its bytes, so tar order, mtimes, owners and .zip vs .tar.gz do not matter;
read from the upload, or sent by the client alone to ask for a hit before uploading), the example inputs'
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
from typing import Any

from kiln_client.digest import combine_file_digests, file_sha256
from kiln_client.flags import parse_flags
from kiln_client.models import CompileRequest

__all__ = ["KEY_VERSION", "entry_key", "inputs_digest", "request_key"]

#: bumped when what a compile depends on changes in a way the other parts do not show
KEY_VERSION = 1


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


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
                    files[info.filename] = file_sha256(member)
    return combine_file_digests(files)


def request_key(req: CompileRequest, *, model: str, inputs: str | None) -> str:
    """The request half of a cache key (stored as ``jobs.cache_key``).

    Args:
        req: The validated form fields (flags already checked).
        model: The SavedModel's content digest (:mod:`kiln_client.digest`): read from the
            upload (``ingest.ArchiveInfo.digest``) or sent by the client (``model_digest``).
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
