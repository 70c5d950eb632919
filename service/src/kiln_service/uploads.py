"""Receive a multipart upload as a stream: files go to disk in chunks, never whole into memory.

FastAPI's ``UploadFile`` would spool the whole body before the route runs, so a file past the cap
would be received entirely before being refused. Here the body is parsed as it arrives
(``python_multipart``); each file part is written to a staging file while its sha256 is computed,
and the request is refused (413) the moment a file or the body passes its cap.

A body that stops arriving for ``KILN_UPLOAD_IDLE_TIMEOUT_SECONDS`` is cut off (408, connection
closed); a malformed ``Content-Type`` (no boundary, or one RFC 2046 does not allow) is a 400; a
full disk (:func:`is_disk_full`) is answered 507 by the route. Whatever the reason a body is not
received whole, its staging files are removed before the error leaves this module.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import IO, TYPE_CHECKING

import anyio
import anyio.to_thread

from kiln_service.errors import (
    BadRequestError,
    PayloadTooLargeError,
    RequestTimeoutError,
    UnsupportedMediaTypeError,
    UploadRejectedError,
)

if TYPE_CHECKING:  # the api extra; the worker imports this module without it
    from python_multipart.multipart import MultipartParser

__all__ = ["ReceivedFile", "ReceivedForm", "is_disk_full", "receive_multipart"]

logger = logging.getLogger(__name__)
_BATCH_BYTES = 1024 * 1024
#: RFC 2046 §5.1.1: 1 to 70 characters from ``bchars``, not ending in a space.
_BOUNDARY = re.compile(rb"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says the disk or quota is full.

    Args:
        exc: An error from spooling, checking or storing an upload.

    Returns:
        True for ``ENOSPC``/``EDQUOT`` anywhere in the chain, or SQLite's "disk is full".
    """
    seen: BaseException | None = exc
    for _ in range(8):  # a short chain: OSError → StoreError, or sqlite3 → SQLAlchemy → StoreError
        if seen is None:
            return False
        if isinstance(seen, OSError) and seen.errno in _DISK_FULL_ERRNOS:
            return True
        if "database or disk is full" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@dataclass
class ReceivedFile:
    """A file part written to a staging file."""

    path: Path
    size: int
    sha256: str
    filename: str | None
    """The client's file name: informative only, never used as a path."""


@dataclass
class ReceivedForm:
    """The parts of a multipart body."""

    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, ReceivedFile] = field(default_factory=dict)

    def cleanup(self) -> None:
        """Delete the staging files."""
        for received in self.files.values():
            received.path.unlink(missing_ok=True)


class _Receiver:
    """Callbacks for :class:`MultipartParser` (all synchronous, run off the event loop)."""

    def __init__(self, *, staging: Path, prefix: str, file_fields: set[str], text_fields: set[str],
                 max_file_bytes: int, max_field_bytes: int) -> None:
        self.form = ReceivedForm()
        self.staging, self.prefix = staging, prefix
        self.file_fields, self.text_fields = file_fields, text_fields
        self.max_file_bytes, self.max_field_bytes = max_file_bytes, max_field_bytes
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[str, str] = {}
        self._name = ""
        self._out: IO[bytes] | None = None
        self._hash = hashlib.sha256()
        self._size = 0
        self._text = bytearray()

    def on_part_begin(self) -> None:
        self._headers, self._size, self._text = {}, 0, bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_field.decode("latin-1").lower()] = self._header_value.decode("latin-1")
        self._header_field = self._header_value = b""

    def on_headers_finished(self) -> None:
        msg = Message()
        msg["content-disposition"] = self._headers.get("content-disposition", "")
        name = msg.get_param("name", header="content-disposition")
        filename = msg.get_param("filename", header="content-disposition")
        if not isinstance(name, str) or not name:
            raise BadRequestError("a multipart part has no name", code="invalid_multipart")
        if name in self.form.fields or name in self.form.files:
            raise UploadRejectedError(f"form field {name!r} was sent twice", code="duplicate_field")
        if name not in self.file_fields | self.text_fields:
            known = ", ".join(sorted(self.file_fields | self.text_fields))
            raise UploadRejectedError(f"unknown form field {name!r}; known fields: {known}",
                                      code="unknown_field")
        self._name = name
        if name in self.file_fields:
            path = self.staging / f"{self.prefix}-{name}"
            self._out = open(path, "wb")  # noqa: SIM115 - closed in on_part_end / close()
            self._hash = hashlib.sha256()
            self.form.files[name] = ReceivedFile(path=path, size=0, sha256="",
                                                 filename=filename if isinstance(filename, str) else None)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        self._size += len(chunk)
        if self._out is not None:
            if self._size > self.max_file_bytes:
                raise PayloadTooLargeError(f"{self._name} is larger than the limit of "
                                           f"{self.max_file_bytes} bytes", code="upload_too_large")
            self._hash.update(chunk)
            self._out.write(chunk)
        else:
            if self._size > self.max_field_bytes:
                raise PayloadTooLargeError(f"form field {self._name!r} is larger than "
                                           f"{self.max_field_bytes} bytes", code="field_too_large")
            self._text += chunk

    def on_part_end(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None
            received = self.form.files[self._name]
            received.size, received.sha256 = self._size, self._hash.hexdigest()
        else:
            try:
                self.form.fields[self._name] = self._text.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UploadRejectedError(f"form field {self._name!r} is not UTF-8 text",
                                          code="invalid_field") from exc

    def close(self) -> None:
        if self._out is not None:
            out, self._out = self._out, None
            out.close()

    def discard(self) -> None:
        """Close and delete everything written so far (the body was not received whole)."""
        # Flushing the last bytes onto a full disk fails too: there is nothing to keep anyway.
        with contextlib.suppress(OSError):
            self.close()
        self.form.cleanup()


async def receive_multipart(
    stream: AsyncIterator[bytes], content_type: str, *, staging: Path, prefix: str,
    file_fields: set[str], text_fields: set[str], max_file_bytes: int, max_body_bytes: int,
    max_field_bytes: int, idle_timeout_seconds: float,
) -> ReceivedForm:
    """Parse a ``multipart/form-data`` body as it arrives.

    Args:
        stream: The request body chunks.
        content_type: The request's ``Content-Type`` header.
        staging: Folder for the staging files.
        prefix: Prefix of the staging files' names (the job id; client names are never used).
        file_fields: Names of the file parts accepted.
        text_fields: Names of the text parts accepted.
        max_file_bytes: Cap on each file.
        max_body_bytes: Cap on the whole body.
        max_field_bytes: Cap on each text field.
        idle_timeout_seconds: Longest wait for the next piece of the body.

    Returns:
        The form; the caller must call :meth:`ReceivedForm.cleanup` when done.

    Raises:
        UnsupportedMediaTypeError: Not ``multipart/form-data``.
        PayloadTooLargeError: A file or the body is over its cap.
        UploadRejectedError: Unknown or duplicate fields.
        BadRequestError: A malformed body or boundary.
        RequestTimeoutError: The body stopped arriving for ``idle_timeout_seconds``.
        OSError: Writing a staging file failed (see :func:`is_disk_full`).
    """
    boundary = _boundary(content_type)
    # Imported here: workers use this module's records, and have no python-multipart (api extra).
    from python_multipart.exceptions import MultipartParseError

    staging.mkdir(parents=True, exist_ok=True)
    receiver = _Receiver(staging=staging, prefix=prefix, file_fields=file_fields,
                         text_fields=text_fields, max_file_bytes=max_file_bytes,
                         max_field_bytes=max_field_bytes)
    try:
        await _feed(_parser(boundary, receiver), stream, max_body_bytes=max_body_bytes,
                    idle_timeout_seconds=idle_timeout_seconds)
    except MultipartParseError as exc:
        receiver.discard()
        raise BadRequestError(f"malformed multipart body: {exc}", code="invalid_multipart") from exc
    except BaseException:
        receiver.discard()
        raise
    try:
        receiver.close()  # a body that ended mid-file leaves one open: its last flush may fail
    except OSError:
        receiver.discard()
        raise
    if any(not f.sha256 for f in receiver.form.files.values()):
        receiver.form.cleanup()
        raise BadRequestError("the multipart body ended in the middle of a file", code="invalid_multipart")
    logger.debug("received %s", {k: v.size for k, v in receiver.form.files.items()})
    return receiver.form


def _parser(boundary: bytes, receiver: _Receiver) -> MultipartParser:
    """A streaming multipart parser calling ``receiver``'s ``on_…`` methods."""
    from python_multipart.multipart import MultipartParser

    return MultipartParser(boundary, {  # type: ignore[arg-type]
        name: getattr(receiver, name) for name in (
            "on_part_begin", "on_part_data", "on_part_end", "on_header_field",
            "on_header_value", "on_header_end", "on_headers_finished")
    })


async def _feed(parser: MultipartParser, stream: AsyncIterator[bytes], *, max_body_bytes: int,
                idle_timeout_seconds: float) -> None:
    """Write the body into ``parser`` as it arrives, in batches, then finalize it.

    Raises:
        PayloadTooLargeError: The body is over ``max_body_bytes``.
        RequestTimeoutError: The body stopped arriving for ``idle_timeout_seconds``.
    """
    total, batch = 0, bytearray()
    async for chunk in _arriving(stream, idle_timeout_seconds):
        total += len(chunk)
        if total > max_body_bytes:
            raise PayloadTooLargeError(f"the request body is larger than {max_body_bytes} bytes",
                                       code="request_too_large")
        batch += chunk
        if len(batch) >= _BATCH_BYTES:
            # Hashing and disk writes run in a thread so the event loop keeps serving others.
            await anyio.to_thread.run_sync(parser.write, bytes(batch))
            batch.clear()
    if batch:
        await anyio.to_thread.run_sync(parser.write, bytes(batch))
    parser.finalize()


def _boundary(content_type: str) -> bytes:
    """Return the multipart boundary of ``content_type``, or raise 415 / 400."""
    from python_multipart.multipart import parse_options_header

    media, params = parse_options_header(content_type)
    if media != b"multipart/form-data":
        raise UnsupportedMediaTypeError("POST /v1/compile takes multipart/form-data with a "
                                        "'model' file part", code="multipart_required")
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequestError(
            "the Content-Type multipart/form-data has no boundary parameter, so the body cannot "
            "be split into parts; let your HTTP client build the multipart body (curl -F, "
            "requests/httpx files=), which sets 'boundary=' itself", code="invalid_multipart")
    if not _BOUNDARY.fullmatch(boundary):
        raise BadRequestError(
            f"the multipart boundary ({len(boundary)} bytes) is not valid: RFC 2046 allows 1 to 70 "
            "letters, digits and '()+_,-./:=? characters, not ending in a space",
            code="invalid_multipart")
    return boundary


async def _arriving(stream: AsyncIterator[bytes], idle_seconds: float) -> AsyncIterator[bytes]:
    """Yield the body's chunks; raise once none arrived for ``idle_seconds``."""
    chunks = stream.__aiter__()
    while True:
        try:
            with anyio.fail_after(idle_seconds):
                chunk = await chunks.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError as exc:
            raise RequestTimeoutError(
                f"no part of the request body arrived for {idle_seconds:g} s "
                "(KILN_UPLOAD_IDLE_TIMEOUT_SECONDS); the partial upload was discarded: send it "
                "again over a working connection") from exc
        yield chunk
