"""A SavedModel's content digest: each file's path and bytes, not how the folder was archived.

The one implementation, shared by the SDK and the service:

- the compile cache keys a model by it (the service from an upload, read in the same pass that
  checks the archive; the SDK from a folder or archive on disk, to ask for a cache hit with the
  digest alone, before any upload: ``POST /v1/compile`` with ``model_digest``);
- the manifest of a compiled model records it (:func:`kiln_client.manifest.content_digest`).

The digest is the sha256 over the files' paths relative to the SavedModel folder, in sorted
order, each with the sha256 of its bytes (:func:`combine_file_digests`): the same whether the
folder is on disk or sent as ``.tar.gz``, ``.tar`` or ``.zip``, in any member order, with any
mtimes, owners or top folder name.
"""

from __future__ import annotations

import hashlib
import tarfile
import zipfile
from collections.abc import Collection, Mapping
from pathlib import Path, PurePosixPath
from typing import IO

__all__ = [
    "SAVED_MODEL_PB",
    "ContentDigest",
    "combine_file_digests",
    "file_sha256",
    "model_digest",
    "saved_model_root",
    "zip_member_name",
]

SAVED_MODEL_PB = "saved_model.pb"
_CHUNK = 1 << 20


def file_sha256(handle: IO[bytes], copy_to: IO[bytes] | None = None) -> bytes:
    """The sha256 (raw bytes) of what is left to read in ``handle``, optionally copied on."""
    digest = hashlib.sha256()
    for block in iter(lambda: handle.read(_CHUNK), b""):
        digest.update(block)
        if copy_to is not None:
            copy_to.write(block)
    return digest.digest()


def combine_file_digests(files: Mapping[str, bytes]) -> str:
    """The content digest of a set of files: each relative path and its bytes' sha256.

    Args:
        files: relative POSIX path → sha256 digest (raw bytes) of the file's content.

    Returns:
        The hex sha256 over the paths in sorted order, each with its digest; the same whatever
        order or archive format the files came in.
    """
    outer = hashlib.sha256()
    for relative in sorted(files, key=lambda name: name.split("/")):  # as paths sort
        outer.update(relative.encode("utf-8", "surrogateescape") + b"\0" + files[relative])
    return outer.hexdigest()


def saved_model_root(names: Collection[str]) -> list[str]:
    """The folders holding a ``saved_model.pb`` at the root (``""``) or one folder down, sorted.

    Args:
        names: The archive's file names, normalised (``a/b``, no ``./``, no trailing ``/``).
    """
    return sorted(n[: -len(SAVED_MODEL_PB)].rstrip("/") for n in names
                  if n == SAVED_MODEL_PB or (n.endswith("/" + SAVED_MODEL_PB) and n.count("/") == 1))


class ContentDigest:
    """Collects each file's sha256 as an archive is read once, then digests one folder of it."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        """Normalised file name → sha256 of its bytes."""

    def add(self, name: str, handle: IO[bytes], copy_to: IO[bytes] | None = None) -> None:
        """Hash the file ``name`` (normalised) from ``handle``; copy its bytes to ``copy_to``."""
        self.files[name] = file_sha256(handle, copy_to)

    def hexdigest(self, root: str, *, exclude: Collection[str] = ()) -> str:
        """The content digest of the folder ``root`` (``""``: everything), paths relative to it.

        Args:
            root: The SavedModel's folder among the names added.
            exclude: Relative paths left out (the manifest of a compiled model).
        """
        head = f"{root}/" if root else ""
        return combine_file_digests({
            name[len(head):]: digest for name, digest in self.files.items()
            if name.startswith(head) and name[len(head):] not in exclude})


def model_digest(path: str | Path, *, exclude: Collection[str] = ()) -> str:
    """The content digest of a SavedModel folder, or of the one in a ``.tar(.gz)``/``.zip``.

    Args:
        path: The SavedModel folder (every file under it counts), or an archive holding it at
            its root or one folder down.
        exclude: Paths relative to the SavedModel folder left out.

    Returns:
        The hex digest, equal to what the service computes from the same files uploaded.

    Raises:
        ValueError: An archive without exactly one SavedModel (the service refuses it too).
        OSError, tarfile.TarError, zipfile.BadZipFile: The file cannot be read.
    """
    source = Path(path)
    digest = ContentDigest()
    if source.is_dir():
        for file in (p for p in source.rglob("*") if p.is_file()):
            with file.open("rb") as handle:
                digest.add(file.relative_to(source).as_posix(), handle)
        return digest.hexdigest("", exclude=exclude)
    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as zf:
            for info in (i for i in zf.infolist() if not i.is_dir()):
                with zf.open(info) as handle:
                    digest.add(_normal(zip_member_name(info)), handle)
    else:
        with tarfile.open(source, mode="r:*", encoding="utf-8", errors="surrogateescape") as tar:
            for entry in (e for e in tar if e.isfile()):
                extracted = tar.extractfile(entry)
                if extracted is not None:
                    with extracted:
                        digest.add(_normal(entry.name), extracted)
    roots = saved_model_root(digest.files)
    if len(roots) != 1:
        raise ValueError(f"{source.name}: expected one {SAVED_MODEL_PB} at the archive's root or "
                         f"one folder down, found {len(roots)}")
    return digest.hexdigest(roots[0], exclude=exclude)


def _normal(name: str) -> str:
    return "/".join(p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", "."))


def zip_member_name(info: zipfile.ZipInfo) -> str:
    """The member's name as text: names not flagged UTF-8 are decoded from their raw bytes as
    UTF-8 (as the tools that write them mean), invalid bytes kept as escapes."""
    name = info.filename
    if info.flag_bits & 0x800 or name.isascii():
        return name
    return name.encode("cp437").decode("utf-8", "surrogateescape")
