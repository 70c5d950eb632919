"""S3-compatible artifact store: the production column of the artifact store.

``KILN_STORAGE_URL=s3://bucket/prefix`` selects it. Endpoint, region and credentials come from
boto3's own environment (``AWS_ENDPOINT_URL``, ``AWS_REGION``, ``AWS_ACCESS_KEY_ID`` …), so any
S3-compatible server (AWS, MinIO, Ceph RGW, moto) works. Optional URL query parameters:
``addressing_style`` (``auto``/``path``/``virtual``; MinIO wants ``path``), ``part_size_mb``
(multipart part size, at least 5) and ``tenant`` (default ``default``).

Object layout: ``<prefix>/<tenant>/<key>``, e.g. ``kiln/default/jobs/<job_id>/report.json``.

Writes are streamed: at most one part (``part_size`` bytes) is held in memory. Small objects go up
in one ``PutObject``; larger ones as a multipart upload, which S3 keeps invisible until completed,
so a reader never sees a half-written object (the local store's "temporary name, then move").
On any error, or past ``max_bytes``, the multipart upload is aborted so no parts remain. The
sha256 is computed while streaming and kept as object metadata (``x-amz-meta-sha256``);
``get_to_file`` verifies it.
"""

from __future__ import annotations

import io
import logging
import os
import re
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

from kiln_service.errors import ArtifactNotFoundError, StoreError
from kiln_service.stores._s3_io import S3ObjectReader, make_client, parse_s3_url, s3_call
from kiln_service.stores._s3_stream import MAX_COPY_OBJECT as MAX_COPY_OBJECT
from kiln_service.stores._s3_stream import MIB, SHA256_META, download_verified, upload_stream
from kiln_service.stores.artifacts import check_key

__all__ = ["S3ArtifactStore"]

logger = logging.getLogger(__name__)

#: S3's smallest part (all but the last part of a multipart upload).
MIN_PART_SIZE = 5 * MIB
DEFAULT_PART_SIZE = 8 * MIB
_URL_OPTIONS = ("addressing_style", "part_size_mb", "tenant")
_TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class S3ArtifactStore:
    """Artifacts in an S3-compatible bucket (the :class:`ArtifactStore` interface).

    Args:
        bucket: Bucket name (must exist).
        prefix: Key prefix inside the bucket; may be empty.
        tenant: Tenant name; every key is stored under ``<prefix>/<tenant>/``.
        part_size: Multipart part size in bytes (at least 5 MiB, S3's minimum).
        client: A boto3 S3 client; by default one is built from boto3's environment.
        addressing_style: ``auto``, ``path`` or ``virtual`` (only when ``client`` is None).

    Raises:
        ValueError: Bad bucket, tenant, part size or addressing style.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        tenant: str = "default",
        part_size: int = DEFAULT_PART_SIZE,
        client: Any = None,
        addressing_style: str = "auto",
    ) -> None:
        if not _BUCKET_RE.match(bucket):
            raise ValueError(f"invalid S3 bucket name {bucket!r}")
        if not _TENANT_RE.match(tenant):
            raise ValueError(f"invalid tenant {tenant!r}: use letters, digits, '_', '-', '.'")
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part size must be at least 5 MiB ({MIN_PART_SIZE} bytes), got {part_size}")
        if addressing_style not in ("auto", "path", "virtual"):
            raise ValueError(f"addressing_style must be auto, path or virtual, not {addressing_style!r}")
        self.bucket, self.prefix, self.tenant = bucket, prefix.strip("/"), tenant
        self.part_size = part_size
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._base = f"{self.prefix}/{tenant}/" if self.prefix else f"{tenant}/"
        self._client = client if client is not None else make_client(addressing_style)

    @classmethod
    def from_url(cls, url: str, *, tenant: str | None = None) -> S3ArtifactStore:
        """Open the store an ``s3://bucket/prefix[?options]`` URL names.

        Args:
            url: The storage URL (``KILN_STORAGE_URL``).
            tenant: Overrides the URL's ``tenant`` option.

        Returns:
            The store.

        Raises:
            ValueError: Not an ``s3://bucket`` URL, or an unknown or bad option.
        """
        bucket, prefix, options = parse_s3_url(url, _URL_OPTIONS)
        try:
            part_size = int(options.get("part_size_mb", DEFAULT_PART_SIZE // MIB)) * MIB
        except ValueError as e:
            raise ValueError(f"part_size_mb must be an integer in {url!r}") from e
        return cls(
            bucket, prefix, tenant=tenant or options.get("tenant", "default"),
            part_size=part_size, addressing_style=options.get("addressing_style", "auto"),
        )

    def with_tenant(self, tenant: str) -> S3ArtifactStore:
        """Return the same store for another tenant (sharing the client).

        Args:
            tenant: The tenant name.

        Returns:
            A store whose keys live under ``<prefix>/<tenant>/``.
        """
        return S3ArtifactStore(self.bucket, self.prefix, tenant=tenant, part_size=self.part_size,
                               client=self._client)

    def object_key(self, key: str) -> str:
        """The bucket key of an artifact key: ``<prefix>/<tenant>/<key>``.

        Args:
            key: Artifact key such as ``jobs/<id>/report.json``.

        Returns:
            The key in the bucket.

        Raises:
            ValueError: Unsafe key (empty, absolute, ``..`` …).
        """
        check_key(key)
        return self._base + key

    def __repr__(self) -> str:
        return f"S3ArtifactStore({self.url!r}, tenant={self.tenant!r})"

    # -- writes ------------------------------------------------------------------------------

    def put_file(self, key: str, path: str | os.PathLike[str]) -> tuple[int, str]:
        """Upload a local file, streamed in parts.

        Args:
            key: Artifact key.
            path: File to upload.

        Returns:
            ``(size, sha256 hex)``.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            StoreError: The object store failed; nothing is left stored.
        """
        with open(path, "rb") as f:
            return self.put_stream(key, iter(lambda: f.read(self.part_size), b""))

    def put_stream(self, key: str, chunks: Iterable[bytes], max_bytes: int | None = None) -> tuple[int, str]:
        """Upload byte chunks, holding at most one part in memory.

        Args:
            key: Artifact key.
            chunks: The content, in chunks of any size.
            max_bytes: Refuse content larger than this (``None``: no cap).

        Returns:
            ``(size, sha256 hex)``.

        Raises:
            PayloadTooLargeError: More than ``max_bytes`` arrived; nothing is left stored.
            StoreError: The object store failed; nothing is left stored.
        """
        full_key = self.object_key(key)
        size, sha = upload_stream(self._client, self.bucket, key, full_key, chunks,
                                  part_size=self.part_size, max_bytes=max_bytes)
        logger.debug("stored s3://%s/%s (%d bytes)", self.bucket, full_key, size)
        return size, sha

    def check_writable(self) -> None:
        """Write and remove a probe object (readiness check).

        Raises:
            StoreError: The bucket is unreachable or not writable.
        """
        probe = f"_probe/{uuid.uuid4().hex}"
        self.put_stream(probe, [b"ok"])
        self._s3(probe, self._client.delete_object, Bucket=self.bucket, Key=self.object_key(probe))

    # -- reads -------------------------------------------------------------------------------

    def open_read(self, key: str) -> BinaryIO:
        """Open an artifact for streamed, seekable reading (a seek becomes a ranged GET).

        Args:
            key: Artifact key.

        Returns:
            A binary file object; close it when done.

        Raises:
            ArtifactNotFoundError: No such artifact.
        """
        size = self.size(key)
        raw = S3ObjectReader(self._client, self.bucket, self.object_key(key), size)
        return cast(BinaryIO, io.BufferedReader(raw, buffer_size=256 * 1024))

    def iter_chunks(self, key: str, chunk_size: int = MIB) -> Iterator[bytes]:
        """Yield an artifact's bytes, streamed from the object store.

        Args:
            key: Artifact key.
            chunk_size: Largest chunk yielded.

        Yields:
            The content, in chunks.

        Raises:
            ArtifactNotFoundError: No such artifact.
        """
        body = self._s3(key, self._client.get_object, Bucket=self.bucket, Key=self.object_key(key))["Body"]
        try:
            yield from body.iter_chunks(chunk_size)
        finally:
            body.close()

    def get_to_file(self, key: str, path: str | os.PathLike[str]) -> None:
        """Download an artifact to a local file, verifying its recorded sha256.

        The file appears under its name only once complete (written beside it, then renamed).

        Args:
            key: Artifact key.
            path: Destination file (replaced).

        Raises:
            ArtifactNotFoundError: No such artifact.
            StoreError: The download failed or the content does not match its sha256.
        """
        download_verified(self._client, self.bucket, key, self.object_key(key), Path(path))

    def exists(self, key: str) -> bool:
        """Return whether an artifact exists."""
        try:
            self._head(key)
        except ArtifactNotFoundError:
            return False
        return True

    def size(self, key: str) -> int:
        """Return an artifact's size in bytes.

        Raises:
            ArtifactNotFoundError: No such artifact.
        """
        return int(self._head(key)["ContentLength"])

    def sha256(self, key: str) -> str | None:
        """Return the sha256 recorded at upload (None for objects stored by other tools).

        Raises:
            ArtifactNotFoundError: No such artifact.
        """
        value = self._head(key).get("Metadata", {}).get(SHA256_META)
        return str(value) if value else None

    def list_prefix(self, prefix: str) -> list[str]:
        """Return the artifact keys under a folder-like prefix (``jobs/<id>/``), sorted."""
        return sorted(k[len(self._base):] for k in self._list_objects(prefix))

    def presign_url(self, key: str, expires: int = 300) -> str:
        """A presigned GET URL, so a client downloads straight from the object store.

        Args:
            key: Artifact key.
            expires: Lifetime in seconds (1 s to 7 days).

        Returns:
            The URL.

        Raises:
            ValueError: ``expires`` out of range.
            ArtifactNotFoundError: No such artifact (checked now, not at the client).
        """
        if not 1 <= expires <= 7 * 24 * 3600:
            raise ValueError(f"expires must be between 1 second and 7 days, got {expires}")
        self._head(key)
        params = {"Bucket": self.bucket, "Key": self.object_key(key)}
        return str(self._client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires))

    # -- deletes -----------------------------------------------------------------------------

    def delete_prefix(self, prefix: str) -> int:
        """Delete every artifact under a folder-like prefix, and unfinished uploads there.

        ``jobs/ab`` and ``jobs/ab/`` both mean the folder: ``jobs/abc/…`` is not touched.

        Args:
            prefix: Artifact key prefix such as ``jobs/<id>/``.

        Returns:
            How many objects were deleted.

        Raises:
            StoreError: The object store refused a deletion.
        """
        keys = self._list_objects(prefix)
        for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = {"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True}
            result = self._s3(prefix, self._client.delete_objects, Bucket=self.bucket, Delete=batch)
            if result.get("Errors"):
                raise StoreError(f"could not delete under {prefix}: {result['Errors'][:3]}")
        self.abort_pending_uploads(prefix)
        logger.debug("deleted %d objects under s3://%s/%s%s", len(keys), self.bucket, self._base, prefix)
        return len(keys)

    def abort_pending_uploads(self, prefix: str = "") -> int:
        """Abort unfinished multipart uploads (left by a killed process) under a prefix.

        Args:
            prefix: Folder-like artifact key prefix; empty for the whole tenant.

        Returns:
            How many uploads were aborted.
        """
        base = self._folder(prefix) if prefix.strip("/") else self._base
        aborted = 0
        pages = self._client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=base)
        for page in self._s3(prefix, list, pages):
            for up in page.get("Uploads", []):
                self._s3(up["Key"], self._client.abort_multipart_upload,
                         Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"])
                aborted += 1
        return aborted

    # -- helpers -----------------------------------------------------------------------------

    def _folder(self, prefix: str) -> str:
        body = prefix.strip("/")
        check_key(body)
        return f"{self._base}{body}/"

    def _list_objects(self, prefix: str) -> list[str]:
        base = self._folder(prefix)
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base)
        return [obj["Key"] for page in self._s3(prefix, list, pages) for obj in page.get("Contents", [])]

    def _head(self, key: str) -> dict[str, Any]:
        result = self._s3(key, self._client.head_object, Bucket=self.bucket, Key=self.object_key(key))
        return cast(dict[str, Any], result)

    def _s3(self, key: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one object-store call, translating botocore errors into the service's."""
        return s3_call(self.bucket, key, call, *args, **kwargs)
