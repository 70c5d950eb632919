"""Streamed transfers of the S3 artifact store, with the sha256 kept as object metadata.

An upload holds at most one part in memory: small content goes up in one ``PutObject``, larger
content as a multipart upload (invisible until completed, aborted on any error or past the size
cap), whose sha256 is then recorded by a server-side copy onto itself. A download is written
beside its destination, checked against the recorded sha256, then renamed into place.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kiln_service.errors import PayloadTooLargeError, StoreError
from kiln_service.stores._s3_io import MultipartUpload, s3_call

__all__ = ["MAX_COPY_OBJECT", "MIB", "SHA256_META", "download_verified", "upload_stream"]

MIB = 1024 * 1024
#: Largest object one CopyObject request may copy.
MAX_COPY_OBJECT = 5 * 1024 * MIB
SHA256_META = "sha256"


def upload_stream(
    client: Any, bucket: str, key: str, full_key: str, chunks: Iterable[bytes], *,
    part_size: int, max_bytes: int | None,
) -> tuple[int, str]:
    """Upload byte chunks to ``full_key`` in ``bucket``, holding at most ``part_size`` bytes.

    The body of :meth:`~kiln_service.stores.s3.S3ArtifactStore.put_stream` (same returns and
    errors); ``key`` is the artifact key that errors name.
    """
    digest, size, buffer = hashlib.sha256(), 0, bytearray()
    upload: MultipartUpload | None = None
    try:
        for chunk in chunks:
            size += len(chunk)
            if max_bytes is not None and size > max_bytes:
                name = key.rsplit("/", 1)[-1]
                raise PayloadTooLargeError(f"{name} is over the limit of {max_bytes} bytes")
            digest.update(chunk)
            buffer += chunk
            while len(buffer) >= part_size:
                upload = upload or s3_call(bucket, key, MultipartUpload, client, bucket, full_key)
                s3_call(bucket, key, upload.send, bytes(buffer[:part_size]))
                del buffer[:part_size]
        sha = digest.hexdigest()
        if upload is None:
            s3_call(bucket, key, client.put_object, Bucket=bucket, Key=full_key,
                    Body=bytes(buffer), Metadata={SHA256_META: sha})
        else:
            if buffer:
                s3_call(bucket, key, upload.send, bytes(buffer))
            s3_call(bucket, key, upload.complete)
            upload = None
            _record_sha256(client, bucket, key, full_key, size, sha)
    except BaseException:
        if upload is not None:
            upload.abort()
        raise
    return size, sha


def _record_sha256(client: Any, bucket: str, key: str, full_key: str, size: int, sha: str) -> None:
    # A multipart upload's metadata is fixed when it starts, before the digest is known; a
    # server-side copy onto itself with REPLACE sets it (no bytes pass through this process).
    # CopyObject takes up to 5 GiB; past that boto3's managed copy goes part by part.
    source = {"Bucket": bucket, "Key": full_key}
    extra = {"Metadata": {SHA256_META: sha}, "MetadataDirective": "REPLACE"}
    try:
        if size <= MAX_COPY_OBJECT:
            client.copy_object(CopySource=source, Bucket=bucket, Key=full_key, **extra)
        else:
            client.copy(source, bucket, full_key, ExtraArgs=extra)
    except Exception as e:
        s3_call(bucket, key, client.delete_object, Bucket=bucket, Key=full_key)
        raise StoreError(f"could not record the sha256 of artifact {key}: {e}") from e


def download_verified(client: Any, bucket: str, key: str, full_key: str, target: Path) -> None:
    """Download ``full_key`` to ``target``, checking the sha256 recorded at upload (if any).

    The file appears under its name only once complete (written beside it, then renamed).

    Args:
        client: boto3 S3 client.
        bucket: Bucket name.
        key: The artifact key (named in errors).
        full_key: The object's key in the bucket.
        target: Destination file (replaced).

    Raises:
        ArtifactNotFoundError: No such object.
        StoreError: The download failed or the content does not match its sha256.
    """
    response = s3_call(bucket, key, client.get_object, Bucket=bucket, Key=full_key)
    expected = response.get("Metadata", {}).get(SHA256_META)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in s3_call(bucket, key, response["Body"].iter_chunks, MIB):
                digest.update(chunk)
                out.write(chunk)
        if expected and digest.hexdigest() != expected:
            raise StoreError(f"artifact {key} is corrupt: sha256 {digest.hexdigest()} != recorded {expected}")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        response["Body"].close()
