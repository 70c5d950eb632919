"""The artifact store: uploads and job outputs, under keys ``jobs/<job_id>/…``.

Uploads live at ``jobs/<job_id>/upload/<name>``; each attempt at a job writes its outputs under
its own keys, ``jobs/<job_id>/attempt-<n>/<name>`` (``n`` is the attempt's fence), and the job
store publishes one attempt's keys atomically with the job's outcome, so a stale attempt writing
late can never change what a job serves. Jobs finished before attempts had keys of their own kept
their outputs at ``jobs/<job_id>/<name>``; those are still read there.

:class:`ArtifactStore` is the interface; :class:`LocalArtifactStore` keeps files in a directory
(the embedded default). Writes go to a temporary name in the same directory and are then moved
into place, so a reader never sees a half-written file. An S3 store will implement the same
Protocol; :func:`open_artifact_store` picks one by URL.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable
from urllib.parse import unquote, urlparse

from kiln_service.errors import ArtifactNotFoundError, PayloadTooLargeError, StoreError

__all__ = [
    "ArtifactStore",
    "LocalArtifactStore",
    "artifact_key",
    "attempt_prefix",
    "check_key",
    "delete_attempts",
    "job_prefix",
    "list_attempts",
    "open_artifact_store",
    "upload_key",
]

logger = logging.getLogger(__name__)
_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,254}$")
_ATTEMPT_DIR = re.compile(r"^attempt-([1-9][0-9]*)/")
COPY_CHUNK = 1024 * 1024


def job_prefix(job_id: str) -> str:
    """Return the key prefix of a job's files: ``jobs/<job_id>/``."""
    return f"jobs/{job_id}/"


def upload_key(job_id: str, name: str) -> str:
    """Return the key of an upload: ``jobs/<job_id>/upload/<name>`` (``model``, ``example_inputs.npz``)."""
    return f"jobs/{job_id}/upload/{name}"


def attempt_prefix(job_id: str, attempt: int) -> str:
    """Return the key prefix of one attempt's outputs: ``jobs/<job_id>/attempt-<attempt>/``."""
    if attempt < 1:
        raise ValueError(f"attempt numbers start at 1, not {attempt}")
    return f"jobs/{job_id}/attempt-{attempt}/"


def artifact_key(job_id: str, name: str, attempt: int | None = None) -> str:
    """Return the key of an output artifact.

    Args:
        job_id: The job.
        name: The artifact's name (``report.json``).
        attempt: The attempt (fence) that wrote it; ``None`` for a job published before
            attempts had keys of their own (``jobs/<job_id>/<name>``).

    Returns:
        ``jobs/<job_id>/attempt-<attempt>/<name>``, or ``jobs/<job_id>/<name>``.
    """
    if attempt is None:
        return f"jobs/{job_id}/{name}"
    return attempt_prefix(job_id, attempt) + name


def list_attempts(store: ArtifactStore, job_id: str) -> set[int]:
    """Return the attempts that have outputs stored for a job (published or not)."""
    found: set[int] = set()
    head = job_prefix(job_id)
    for key in store.list_prefix(head):
        match = _ATTEMPT_DIR.match(key[len(head):])
        if match:
            found.add(int(match.group(1)))
    return found


def delete_attempts(store: ArtifactStore, job_id: str, attempts: Iterable[int]) -> int:
    """Delete the outputs of some attempts of a job.

    Returns:
        How many objects were deleted.

    Raises:
        StoreError: The store refused a deletion.
    """
    return sum(store.delete_prefix(attempt_prefix(job_id, n)) for n in sorted(set(attempts)))


@runtime_checkable
class ArtifactStore(Protocol):
    """Where uploads and artifacts live. Keys are ``/``-separated, with safe segments only."""

    url: str

    def put_file(self, key: str, path: str | os.PathLike[str]) -> tuple[int, str]:
        """Store a local file under ``key``; return ``(size, sha256 hex)``."""
        ...

    def put_stream(self, key: str, chunks: Iterable[bytes], max_bytes: int | None = None) -> tuple[int, str]:
        """Store the bytes of ``chunks`` under ``key``, refusing more than ``max_bytes``."""
        ...

    def open_read(self, key: str) -> BinaryIO:
        """Open the object for reading (binary, seekable)."""
        ...

    def get_to_file(self, key: str, path: str | os.PathLike[str]) -> None:
        """Copy the object to a local file."""
        ...

    def exists(self, key: str) -> bool:
        """Return whether the object exists."""
        ...

    def size(self, key: str) -> int:
        """Return the object's size in bytes."""
        ...

    def list_prefix(self, prefix: str) -> list[str]:
        """Return the keys under ``prefix``, sorted."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; return how many were deleted."""
        ...

    def check_writable(self) -> None:
        """Raise :class:`StoreError` unless an object can be written and removed."""
        ...


def check_key(key: str, *, prefix: bool = False) -> list[str]:
    """Split a key into segments, refusing anything that could escape the store.

    Args:
        key: The key (or a prefix ending in ``/`` when ``prefix`` is true).
        prefix: Whether ``key`` is a prefix.

    Returns:
        The segments.

    Raises:
        ValueError: Empty, absolute, ``..`` or otherwise unsafe segments.
    """
    body = key[:-1] if prefix and key.endswith("/") else key
    parts = body.split("/")
    if not body or any(not _SEGMENT.match(p) for p in parts):
        raise ValueError(f"unsafe artifact key {key!r}")
    return parts


class LocalArtifactStore:
    """Artifacts in a local directory.

    Args:
        root: The directory (created if missing).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = f"file://{self.root}"

    def path_for(self, key: str) -> Path:
        """Return the local path of ``key`` (for ``FileResponse``-style serving and moves)."""
        return self.root.joinpath(*check_key(key))

    def put_file(self, key: str, path: str | os.PathLike[str]) -> tuple[int, str]:
        """Copy a local file into the store.

        Args:
            key: Destination key.
            path: Source file.

        Returns:
            ``(size, sha256 hex)`` of the stored content.

        Raises:
            StoreError: The write failed (disk full, permissions).
        """
        with open(path, "rb") as src:
            return self.put_stream(key, iter(lambda: src.read(COPY_CHUNK), b""))

    def put_stream(
        self, key: str, chunks: Iterable[bytes], max_bytes: int | None = None
    ) -> tuple[int, str]:
        """Write ``chunks`` to a temporary file, then move it to ``key``.

        Args:
            key: Destination key.
            chunks: The content, in pieces.
            max_bytes: Refuse (and keep nothing) past this many bytes.

        Returns:
            ``(size, sha256 hex)``.

        Raises:
            PayloadTooLargeError: More than ``max_bytes`` bytes.
            StoreError: The write failed.
        """
        dest = self.path_for(key)
        digest, size = hashlib.sha256(), 0
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        except OSError as exc:
            raise StoreError(f"artifact store not writable at {dest.parent}: {exc}") from exc
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise PayloadTooLargeError(
                            f"{key.rsplit('/', 1)[-1]} is over the limit of {max_bytes} bytes"
                        )
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp_name, dest)
        except OSError as exc:
            _unlink_quietly(tmp_name)
            raise StoreError(f"could not write artifact {key}: {exc}") from exc
        except BaseException:
            _unlink_quietly(tmp_name)
            raise
        return size, digest.hexdigest()

    def open_read(self, key: str) -> BinaryIO:
        """Open ``key`` for binary reading.

        Raises:
            ArtifactNotFoundError: No such object.
        """
        try:
            return open(self.path_for(key), "rb")
        except FileNotFoundError as exc:
            raise ArtifactNotFoundError(f"no artifact {key!r}") from exc

    def get_to_file(self, key: str, path: str | os.PathLike[str]) -> None:
        """Copy ``key`` to a local file (replacing it).

        Raises:
            ArtifactNotFoundError: No such object.
        """
        with self.open_read(key) as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst, COPY_CHUNK)

    def exists(self, key: str) -> bool:
        """Return whether ``key`` exists."""
        return self.path_for(key).is_file()

    def size(self, key: str) -> int:
        """Return the size of ``key`` in bytes.

        Raises:
            ArtifactNotFoundError: No such object.
        """
        try:
            return self.path_for(key).stat().st_size
        except FileNotFoundError as exc:
            raise ArtifactNotFoundError(f"no artifact {key!r}") from exc

    def list_prefix(self, prefix: str) -> list[str]:
        """Return the keys under ``prefix`` (temporary files excluded), sorted."""
        base = self.root.joinpath(*check_key(prefix, prefix=True))
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*") if p.is_file() and not p.name.startswith(".")
        )

    def delete_prefix(self, prefix: str) -> int:
        """Delete everything under ``prefix`` (a folder-like prefix such as ``jobs/<id>/``).

        Returns:
            How many files were deleted.

        Raises:
            StoreError: The deletion failed.
        """
        base = self.root.joinpath(*check_key(prefix, prefix=True))
        if not base.exists():
            return 0
        count = sum(1 for p in base.rglob("*") if p.is_file()) if base.is_dir() else 1
        try:
            if base.is_dir():
                shutil.rmtree(base)
            else:
                base.unlink()
        except OSError as exc:
            raise StoreError(f"could not delete {prefix}: {exc}") from exc
        return count

    def check_writable(self) -> None:
        """Write and remove a probe file.

        Raises:
            StoreError: The directory is not writable.
        """
        probe = self.root / f".probe-{uuid.uuid4().hex}"
        try:
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise StoreError(f"artifact store not writable at {self.root}: {exc}") from exc


def open_artifact_store(url: str) -> ArtifactStore:
    """Open the artifact store named by ``url``.

    Args:
        url: ``file:///abs/dir`` (or a plain path), or ``s3://bucket/prefix``.

    Returns:
        The store.

    Raises:
        ValueError: Unsupported scheme.
    """
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        path = unquote(parsed.path) if parsed.scheme else url
        if parsed.netloc and parsed.netloc != "localhost":
            # file://relative/dir is a common slip; treat netloc+path as a relative path.
            path = parsed.netloc + path
        return LocalArtifactStore(path)
    if parsed.scheme == "s3":
        # Imported lazily: boto3 is only needed when an S3 store is configured.
        from kiln_service.stores.s3 import S3ArtifactStore

        store: ArtifactStore = S3ArtifactStore.from_url(url)
        return store
    raise ValueError(f"unsupported KILN_STORAGE_URL scheme {parsed.scheme!r}; "
                     "use file:///path/to/dir or s3://bucket/prefix")


def _unlink_quietly(path: str | os.PathLike[str]) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
