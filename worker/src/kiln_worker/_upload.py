"""Files of a job on the worker: unpack the uploaded model, pack the workdir.

The service has already checked the upload; unpacking checks again (no links, no absolute or
``..`` paths, regular files and folders only) because the worker must not trust the store.
"""

from __future__ import annotations

import os
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from kiln_client._artifacts import TAR_GZ_COMPRESSLEVEL

__all__ = ["UploadError", "find_saved_model", "pack_dir", "unpack_model"]


class UploadError(Exception):
    """The stored upload is not a usable SavedModel archive (a ``client_error``)."""


def unpack_model(archive: Path, dest: Path) -> Path:
    """Unpack a model archive (.tar, .tar.gz or .zip) and return the SavedModel directory.

    Args:
        archive: the archive as uploaded.
        dest: an empty directory to unpack into.

    Returns:
        The directory holding ``saved_model.pb`` (``dest`` or one folder down).

    Raises:
        UploadError: not an archive, an unsafe entry, or no SavedModel inside.
    """
    dest.mkdir(parents=True, exist_ok=True)
    if tarfile.is_tarfile(archive):
        _unpack_tar(archive, dest)
    elif zipfile.is_zipfile(archive):
        _unpack_zip(archive, dest)
    else:
        raise UploadError("the model upload is neither a tar nor a zip archive")
    return find_saved_model(dest)


def find_saved_model(root: Path) -> Path:
    """The directory holding ``saved_model.pb``: ``root`` itself or its only such subfolder.

    Raises:
        UploadError: no SavedModel, or several candidates.
    """
    if (root / "saved_model.pb").is_file():
        return root
    found = sorted(p.parent for p in root.glob("*/saved_model.pb"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise UploadError("no saved_model.pb at the root of the archive or one folder down")
    raise UploadError(f"several SavedModels in the archive: {[p.name for p in found]}")


def _safe_parts(name: str) -> tuple[str, ...]:
    path = PurePosixPath(name)
    if path.is_absolute() or any(part == ".." for part in path.parts):
        raise UploadError(f"unsafe path in the archive: {name!r}")
    return tuple(part for part in path.parts if part not in ("", "."))


def _unpack_tar(archive: Path, dest: Path) -> None:
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                _safe_parts(member.name)
                if not (member.isfile() or member.isdir()):
                    raise UploadError(f"the archive holds a link or special file: {member.name!r}")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # Python before 3.10.12: the members were checked above
                tar.extractall(dest, members=members)
    except (tarfile.TarError, OSError) as exc:
        raise UploadError(f"cannot unpack the model archive: {exc}") from exc


def _unpack_zip(archive: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                parts = _safe_parts(info.filename)
                if not parts:
                    continue
                target = dest.joinpath(*parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(1024 * 1024):
                        out.write(chunk)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UploadError(f"cannot unpack the model archive: {exc}") from exc


def pack_dir(directory: Path, archive: Path, arcname: str) -> int:
    """Pack the regular files and folders of ``directory`` into a .tar.gz.

    Links and special files a compile may have left are skipped, never followed.

    Returns:
        How many files were packed.
    """
    count = 0
    with tarfile.open(archive, "w:gz", compresslevel=TAR_GZ_COMPRESSLEVEL) as tar:
        tar.add(directory, arcname=arcname, recursive=False)
        for root, dirs, files in os.walk(directory, followlinks=False):
            rel = Path(root).relative_to(directory)
            for name in sorted(dirs):
                if not (Path(root) / name).is_symlink():
                    tar.add(Path(root) / name, arcname=f"{arcname}/{(rel / name).as_posix()}",
                            recursive=False)
            for name in sorted(files):
                path = Path(root) / name
                if path.is_file() and not path.is_symlink():
                    tar.add(path, arcname=f"{arcname}/{(rel / name).as_posix()}", recursive=False)
                    count += 1
    return count
