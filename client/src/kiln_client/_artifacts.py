"""Helpers shared by the sync and async job handles: checksums, safe extraction, SSE parsing."""

from __future__ import annotations

import hashlib
import shutil
import tarfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from kiln_client._progress import ProgressBar
from kiln_client.errors import ChecksumError, KilnError

__all__ = [
    "COMPILED_MODEL",
    "REDIRECT",
    "TAR_GZ_COMPRESSLEVEL",
    "SSEParser",
    "append_download",
    "append_download_async",
    "artifact_target",
    "extract_saved_model",
    "finish_download",
]

COMPILED_MODEL = "compiled_model.tar.gz"
#: gzip level of every ``.tar.gz`` Kiln writes (uploads, compiled models, workdirs): SavedModels
#: are mostly float weights, which barely compress, and level 9 took 10 s on ResNet50.
TAR_GZ_COMPRESSLEVEL = 1


def artifact_target(name: str, dest: str | Path | None) -> Path:
    """Where ``name`` goes: into ``dest`` when it is a directory (or ``None``: the cwd), else ``dest``.

    Args:
        name: the artifact's name.
        dest: a directory, a file path, or ``None``.

    Returns:
        The file path to write.
    """
    if dest is None:
        return Path.cwd() / name
    path = Path(dest)
    if path.is_dir() or str(dest).endswith(("/", "\\")):
        path.mkdir(parents=True, exist_ok=True)
        return path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def finish_download(part: Path, target: Path, name: str, digest: hashlib._Hash, expected: str | None) -> Path:
    """Check the digest of a finished ``.part`` file and move it into place.

    Args:
        part: the temporary file holding the downloaded bytes.
        target: its final path.
        name: the artifact's name, for the error message.
        digest: the running sha256 over every byte written.
        expected: the hex sha256 the service announced (header or job listing).

    Returns:
        ``target``.

    Raises:
        ChecksumError: the bytes do not match; the partial file is removed.
    """
    actual = digest.hexdigest()
    if expected and actual.lower() != expected.lower():
        part.unlink(missing_ok=True)
        raise ChecksumError(name, expected, actual)
    part.replace(target)
    return target


def _check_member(member: tarfile.TarInfo, root: Path) -> None:
    """Refuse members that would land outside ``root`` or are not plain files/dirs."""
    if not (member.isfile() or member.isdir()):
        raise KilnError(f"compiled model archive holds a link or device ({member.name}); refusing it")
    resolved = (root / member.name).resolve()
    if resolved != root and root not in resolved.parents:
        raise KilnError(f"compiled model archive member escapes its folder: {member.name}")


def _clean(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


def _strip_prefix(members: list[tarfile.TarInfo]) -> str:
    """The single top folder holding ``saved_model.pb`` (``"name/"``), or ``""`` if at the root."""
    names = {_clean(m.name) for m in members}
    if "saved_model.pb" in names:
        return ""
    tops = {n.split("/", 1)[0] for n in names if n}
    if len(tops) == 1:
        top = tops.pop()
        if f"{top}/saved_model.pb" in names:
            return f"{top}/"
    raise KilnError("the compiled model archive holds no SavedModel (no saved_model.pb)")


def extract_saved_model(archive: Path, dest: Path) -> Path:
    """Extract a compiled-model archive so that ``dest`` itself is the SavedModel directory.

    A single top folder in the archive (``compiled_model/saved_model.pb``) is stripped.

    Args:
        archive: the verified ``.tar.gz``.
        dest: the directory to extract into (created).

    Returns:
        ``dest``, holding ``saved_model.pb`` (loadable with ``tf.saved_model.load``).

    Raises:
        KilnError: unsafe members, or no ``saved_model.pb`` inside.
    """
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        prefix = _strip_prefix(members)
        chosen = []
        for member in members:
            name = _clean(member.name)
            if not name.startswith(prefix) or name == prefix.rstrip("/"):
                continue
            member.name = name[len(prefix):]
            _check_member(member, root)
            chosen.append(member)
        for member in chosen:
            # Members were checked above; extract one at a time to stay valid on 3.10 (no filter=).
            tar.extract(member, root)
    return dest


def remove_path(path: Path) -> None:
    """Remove a file or directory tree if it exists."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class SSEParser:
    """Incremental parser of ``text/event-stream`` lines into ``(event, id, data)`` tuples."""

    def __init__(self) -> None:
        self.last_id: str | None = None
        self._event = "message"
        self._data: list[str] = []

    def feed(self, line: str) -> Iterator[tuple[str, str | None, str]]:
        """Feed one line (without its newline); yields an event when a blank line ends one."""
        if line == "":
            if self._data:
                yield self._event, self.last_id, "\n".join(self._data)
            self._event, self._data = "message", []
            return
        if line.startswith(":"):
            return  # comment / keep-alive
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            self._data.append(value)
        elif field == "id":
            self.last_id = value
        elif field == "event":
            self._event = value


#: Downloads ask for a presigned URL (answered 307 when the service stores artifacts in S3).
REDIRECT = {"redirect": "true"}


def _restart_unless_ranged(resp: httpx.Response, out: BinaryIO, digest: Any, bar: ProgressBar) -> Any:
    if out.tell() and resp.status_code != 206:
        out.seek(0)  # the server ignored Range: start over
        out.truncate()
        digest = hashlib.sha256()
    bar.total = int(resp.headers.get("content-length", 0)) + out.tell() or None
    return digest


def append_download(resp: httpx.Response, out: BinaryIO, digest: Any, bar: ProgressBar,
          chunks: Iterator[bytes]) -> Any:
    """Append a (ranged) download's bytes to ``out``; the running sha256."""
    digest = _restart_unless_ranged(resp, out, digest, bar)
    for chunk in chunks:
        out.write(chunk)
        digest.update(chunk)
        bar.advance(len(chunk))
    return digest


async def append_download_async(resp: httpx.Response, out: BinaryIO, digest: Any, bar: ProgressBar,
                 chunks: AsyncIterator[bytes]) -> Any:
    """The async twin of :func:`append_download`."""
    digest = _restart_unless_ranged(resp, out, digest, bar)
    async for chunk in chunks:
        out.write(chunk)
        digest.update(chunk)
        bar.advance(len(chunk))
    return digest
