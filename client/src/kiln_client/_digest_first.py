"""Ask the compile cache with the model's digest before uploading the model.

``compile()`` on a model on disk (a SavedModel folder or an archive) with the cache on first
sends ``POST /v1/compile`` with every field as usual and ``model_digest`` (the SavedModel's
content digest, :func:`kiln_client.digest.model_digest`) instead of the ``model`` part. A hit in
the tenant's cache answers at once, as an upload's hit would; a miss is a 409
``upload_required`` (the service stored nothing), and ``compile()`` then packs and uploads the
model under the same ``Idempotency-Key``; so it does when a Kiln older than ``model_digest``
refuses the field (422 ``unknown_field``). The user sees one job either way.
"""

from __future__ import annotations

import logging
import os
import tarfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from kiln_client._forms import multipart
from kiln_client._upload import prepare_inputs
from kiln_client.digest import model_digest
from kiln_client.errors import APIStatusError, ConflictError
from kiln_client.problem_codes import ProblemCode

if TYPE_CHECKING:
    from kiln_client._client import AsyncClient, Client

__all__ = ["DigestRequest", "ask_cache", "ask_cache_async", "digest_request", "upload_required"]

logger = logging.getLogger(__name__)
#: requests whose outcome the worker completes (exports): they always compile, so a digest-only
#: request could only miss
_ALWAYS_COMPILE = ("output_location", "mlflow_register")


@dataclass(frozen=True)
class DigestRequest:
    """The digest-only ``POST /v1/compile``: its fields and files, and the inputs it wrote."""

    form: dict[str, str]
    files: dict[str, Any]
    example_inputs: Path | None
    """The ``.npz`` written for it, reused by the upload after a miss."""


def digest_request(model: Any, example_inputs: Any, form: Mapping[str, str], *, signature: str,
                   workdir: Path) -> DigestRequest | None:
    """The digest-only request for ``model``, or ``None`` when the model must be uploaded.

    ``None`` when the cache is off (``cache=false``), the request always compiles, the model is
    not on disk (a keras object, ``model_url``) or cannot be digested (the upload then reports
    what is wrong with it).

    Raises:
        InputError: ``example_inputs`` cannot be written (as the upload would raise).
    """
    if form.get("cache") == "false" or any(f in form for f in _ALWAYS_COMPILE):
        return None
    if not isinstance(model, (str, os.PathLike)) or not Path(model).exists():
        return None
    try:
        digest = model_digest(Path(model))
    except (ValueError, OSError, tarfile.TarError, zipfile.BadZipFile) as exc:
        logger.debug("no digest-first request: %s", exc)
        return None
    inputs = prepare_inputs(Path(model), example_inputs, signature=signature, workdir=workdir)
    files = {} if inputs is None else {
        "example_inputs": ("example_inputs.npz", inputs.read_bytes(), "application/octet-stream")}
    return DigestRequest(form={**form, "model_digest": digest}, files=files, example_inputs=inputs)


def ask_cache(client: Client, ask: DigestRequest, headers: dict[str, str]) -> httpx.Response | None:
    """Send the digest-only request: its answer on a hit, ``None`` when the model must be sent."""
    try:
        return client._request("POST", "/v1/compile", headers=headers,
                               **multipart(ask.form, ask.files))
    except APIStatusError as exc:
        if upload_required(exc):
            return None
        raise


async def ask_cache_async(client: AsyncClient, ask: DigestRequest,
                          headers: dict[str, str]) -> httpx.Response | None:
    """:func:`ask_cache` for the async client."""
    try:
        return await client._request("POST", "/v1/compile", headers=headers,
                                     **multipart(ask.form, ask.files))
    except APIStatusError as exc:
        if upload_required(exc):
            return None
        raise


def upload_required(exc: APIStatusError) -> bool:
    """Whether ``exc`` answers a digest-only request with "send the model": a cache miss, or a
    Kiln older than ``model_digest`` refusing the field it does not know."""
    if isinstance(exc, ConflictError):
        return bool(exc.code == ProblemCode.UPLOAD_REQUIRED.value)
    detail = exc.problem.detail if exc.problem is not None else None
    return exc.code == ProblemCode.UNKNOWN_FIELD.value and "model_digest" in (detail or "")
