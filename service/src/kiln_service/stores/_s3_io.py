"""Pieces of the S3 artifact store kept apart to keep ``s3.py`` short.

A seekable reader over one object, one multipart upload in progress, the client factory, and the
translation of botocore errors into the service's (``ArtifactNotFoundError``, ``StoreError``).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kiln_service.errors import ArtifactNotFoundError, StoreError

__all__ = ["MultipartUpload", "S3ObjectReader", "is_not_found", "make_client", "parse_s3_url", "s3_call"]

logger = logging.getLogger(__name__)

_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}


def is_not_found(error: BaseException) -> bool:
    """Whether a botocore error means "no such key".

    Args:
        error: The exception a client call raised.

    Returns:
        True for a 404 / NoSuchKey answer.
    """
    response = getattr(error, "response", None)
    if not isinstance(response, dict):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in _NOT_FOUND_CODES or status == 404


def s3_call(bucket: str, key: str, call: Any, *args: Any, **kwargs: Any) -> Any:
    """Run one object-store call, translating botocore errors into the service's.

    Args:
        bucket: The bucket, named in the error message.
        key: The artifact key the call is about, named in the error message.
        call: The client method (or any callable) to run with ``args`` and ``kwargs``.

    Returns:
        What ``call`` returned.

    Raises:
        ArtifactNotFoundError: The object store answered "no such key".
        StoreError: Any other botocore error.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return call(*args, **kwargs)
    except (BotoCoreError, ClientError) as e:
        if is_not_found(e):
            raise ArtifactNotFoundError(f"no artifact {key!r}") from e
        raise StoreError(f"object store error on {key} in s3://{bucket}: {e}") from e


class S3ObjectReader(io.RawIOBase):
    """A read-only, seekable file over one S3 object.

    Reads stream one GET body; a seek drops it and the next read opens a ranged GET from the
    new offset, so HTTP range requests on downloads cost no more than the bytes they ask for.

    Args:
        client: boto3 S3 client.
        bucket: Bucket name.
        key: Full object key.
        size: Object size in bytes (from a HEAD).
    """

    def __init__(self, client: Any, bucket: str, key: str, size: int) -> None:
        super().__init__()
        self._client, self._bucket, self._key = client, bucket, key
        self.size = size
        self._pos = 0
        self._body: Any = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        target = base + offset
        if target < 0:
            raise ValueError(f"negative seek position {target}")
        if target != self._pos:
            self._drop_body()
            self._pos = target
        return self._pos

    def readinto(self, buffer: Any) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        if self._pos >= self.size or len(buffer) == 0:
            return 0
        if self._body is None:
            self._body = self._client.get_object(
                Bucket=self._bucket, Key=self._key, Range=f"bytes={self._pos}-"
            )["Body"]
        data = self._body.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self._pos += n
        return n

    def close(self) -> None:
        self._drop_body()
        super().close()

    def _drop_body(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None


class MultipartUpload:
    """One multipart upload in progress: send parts in order, then complete or abort.

    Args:
        client: boto3 S3 client.
        bucket: Bucket name.
        key: Full object key.
    """

    def __init__(self, client: Any, bucket: str, key: str) -> None:
        self._client, self._bucket, self._key = client, bucket, key
        self._parts: list[dict[str, Any]] = []
        self.upload_id: str = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]

    def send(self, data: bytes) -> None:
        """Upload the next part."""
        number = len(self._parts) + 1
        result = self._client.upload_part(
            Bucket=self._bucket, Key=self._key, UploadId=self.upload_id, PartNumber=number, Body=data
        )
        self._parts.append({"PartNumber": number, "ETag": result["ETag"]})

    def complete(self) -> None:
        """Assemble the parts into the object (it becomes visible only now)."""
        self._client.complete_multipart_upload(
            Bucket=self._bucket, Key=self._key, UploadId=self.upload_id,
            MultipartUpload={"Parts": self._parts},
        )

    def abort(self) -> None:
        """Drop the upload and its parts; never raises (the caller's error matters more)."""
        try:
            self._client.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=self.upload_id)
        except Exception:
            # A lifecycle rule or S3ArtifactStore.abort_pending_uploads() reaps what is left.
            logger.warning("could not abort multipart upload %s of %s", self.upload_id, self._key, exc_info=True)


def make_client(addressing_style: str) -> Any:
    """A boto3 S3 client configured from the environment.

    boto3 reads ``AWS_ENDPOINT_URL`` (any S3-compatible server), ``AWS_REGION`` and the usual
    credential chain itself.

    Args:
        addressing_style: ``auto``, ``path`` or ``virtual``.

    Returns:
        The client.
    """
    import boto3
    from botocore.config import Config

    config = Config(s3={"addressing_style": addressing_style}, retries={"mode": "standard"})
    return boto3.client("s3", config=config)


def parse_s3_url(url: str, known_options: Iterable[str]) -> tuple[str, str, dict[str, str]]:
    """Split ``s3://bucket/prefix?opt=value`` into bucket, prefix and options.

    Args:
        url: The storage URL.
        known_options: Option names allowed in the query string.

    Returns:
        ``(bucket, prefix, options)``.

    Raises:
        ValueError: Not an ``s3://bucket`` URL, or an unknown option (the message lists the known ones).
    """
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"not an S3 storage URL: {url!r} (expected s3://bucket/prefix)")
    options = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    known = list(known_options)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} in {url!r}; known: {', '.join(known)}")
    return parts.netloc, parts.path.strip("/"), options
