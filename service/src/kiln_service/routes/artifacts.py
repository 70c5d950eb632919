"""Artifact routes: list a job's files and download one (streamed, with digest, ranges)."""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import AsyncIterator
from typing import BinaryIO

import anyio.to_thread
from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse

from kiln_client.models import Artifact
from kiln_service.deps import ArtifactStoreDep, SettingsDep, ValidJobDep
from kiln_service.errors import ArtifactNotFoundError, RangeNotSatisfiableError
from kiln_service.stores.artifacts import artifact_key

__all__ = ["router"]

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["artifacts"])
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@router.get("/{job_id}/artifacts", response_model=list[Artifact], summary="List a job's artifacts")
def list_artifacts(job: ValidJobDep) -> list[Artifact]:
    """Return the job's downloadable files."""
    return list(job.artifacts)


@router.get(
    "/{job_id}/artifacts/{name}", summary="Download an artifact",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}},
               206: {"description": "Partial content (Range)"},
               307: {"description": "`redirect=true` on an S3 store: a presigned URL"}},
)
async def download_artifact(
    request: Request, name: str, job: ValidJobDep, store: ArtifactStoreDep, settings: SettingsDep,
    redirect: bool = False,
) -> Response:
    """Stream one artifact with ``X-Checksum-SHA256``, ``Digest``, ``ETag`` and range support.

    With ``redirect=true`` and an S3 artifact store, answer 307 to a presigned URL valid for
    ``KILN_PRESIGNED_URL_SECONDS`` instead, so the bytes do not pass through the API.
    """
    artifact = next((a for a in job.artifacts if a.name == name), None)
    if artifact is None:
        known = ", ".join(a.name for a in job.artifacts) or "none yet"
        raise ArtifactNotFoundError(f"job {job.id} has no artifact {name!r}; artifacts: {known}")
    # The published attempt's keys only: files another attempt wrote are never served. A job
    # answered from the compile cache serves its source job's files.
    key = artifact_key(job.artifacts_job, name, attempt=job.published_attempt)
    presign = getattr(store, "presign_url", None)
    if redirect and presign is not None:
        url = await anyio.to_thread.run_sync(presign, key, settings.presigned_url_seconds)
        return RedirectResponse(url, status_code=307, headers={
            "X-Checksum-SHA256": artifact.sha256, "Cache-Control": "no-store"})
    etag = f'"{artifact.sha256}"'
    headers = {
        "X-Checksum-SHA256": artifact.sha256,
        "Digest": "sha-256=" + base64.b64encode(bytes.fromhex(artifact.sha256)).decode(),
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Content-Disposition": f'attachment; filename="{artifact.name}"',
    }
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    size = artifact.size
    span = _parse_range(request.headers.get("range"), size, request.headers.get("if-range"), etag)
    start, end = span if span is not None else (0, size - 1)
    try:
        handle = await anyio.to_thread.run_sync(store.open_read, key)
    except FileNotFoundError as exc:  # another store's "not found" type
        raise ArtifactNotFoundError(f"artifact {name!r} of job {job.id} is missing from storage") from exc
    headers["Content-Length"] = str(max(end - start + 1, 0))
    status = 200
    if span is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return StreamingResponse(
        _read_span(handle, start, end, settings.upload_chunk_bytes), status_code=status,
        headers=headers, media_type=artifact.content_type,
    )


def _parse_range(header: str | None, size: int, if_range: str | None, etag: str) -> tuple[int, int] | None:
    """Return the single byte range asked for, ``None`` for the whole file."""
    if not header or (if_range is not None and if_range != etag):
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None  # multiple or odd ranges: RFC 9110 lets us answer with the whole file
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":
        length = int(last)
        if length == 0:
            raise _unsatisfiable(size)
        return max(size - length, 0), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        raise _unsatisfiable(size)
    return start, end


def _unsatisfiable(size: int) -> RangeNotSatisfiableError:
    return RangeNotSatisfiableError(f"the range does not overlap the artifact (size {size} bytes)",
                                    headers={"Content-Range": f"bytes */{size}"})


async def _read_span(handle: BinaryIO, start: int, end: int, chunk: int) -> AsyncIterator[bytes]:
    try:
        await anyio.to_thread.run_sync(handle.seek, start)
        remaining = end - start + 1
        while remaining > 0:
            data = await anyio.to_thread.run_sync(handle.read, min(chunk, remaining))
            if not data:
                break
            remaining -= len(data)
            yield data
    finally:
        handle.close()
