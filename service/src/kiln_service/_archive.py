"""Member-by-member checks of an uploaded archive, from its headers, before anything is extracted.

Used by :mod:`kiln_service.ingest` for the model archive and for the zip inside an ``.npz``.
"""

from __future__ import annotations

import stat
import tarfile
import unicodedata
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import IO

from kiln_client.digest import zip_member_name
from kiln_service.errors import UploadRejectedError

__all__ = [
    "FileReader", "Tally", "archive_kind", "check_zip_info", "open_tar", "reject", "safe_name", "tar_members",
    "zip_member_name", "zip_members",
]

#: reads one archive member: its normalised name and an open stream of its bytes
FileReader = Callable[[str, IO[bytes]], None]

MAX_NAME_BYTES = 1024
MAX_PATH_DEPTH = 32
#: Deflate cannot beat ~1032:1, so a larger declared ratio is a forged size (a zip bomb).
MAX_ZIP_RATIO = 1000


def reject(code: str, detail: str) -> UploadRejectedError:
    """Return the 422 for an upload refused with ``code`` (the caller raises it)."""
    return UploadRejectedError(detail, code=code)


def safe_name(raw: str) -> str:
    """Return a member name normalised (no ``./``, no trailing ``/``) or raise if unsafe.

    Names are text: bytes that are not UTF-8 (kept by the readers as surrogate escapes) and
    control characters (CR, LF, tab, NUL, DEL, C1 codes…) are refused, as they would corrupt
    logs and listings or be mangled differently by each file system.
    """
    if len(raw.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise reject("unsafe_archive", f"archive member name longer than {MAX_NAME_BYTES} bytes")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        shown = raw.encode("utf-8", "surrogateescape")
        raise reject("unsafe_archive", f"archive member name {shown[:200]!r} is not valid UTF-8; "
                      "rename the file (or re-create the archive with UTF-8 names)") from None
    control = next((c for c in raw if unicodedata.category(c) == "Cc"), None)
    if control is not None:
        raise reject("unsafe_archive", f"archive member name {raw[:200]!r} contains the control "
                      f"character U+{ord(control):04X}; names may not hold CR, LF, tab or other "
                      "control characters")
    if raw.startswith("/") or raw.startswith("\\") or (len(raw) > 1 and raw[1] == ":"):
        raise reject("unsafe_archive", f"archive member {raw!r} has an absolute path; "
                      "archive the SavedModel folder with relative paths")
    parts = [p for p in PurePosixPath(raw.replace("\\", "/")).parts if p not in ("", ".")]
    if ".." in parts:
        raise reject("unsafe_archive", f"archive member {raw!r} points outside the archive ('..')")
    if len(parts) > MAX_PATH_DEPTH:
        raise reject("unsafe_archive", f"archive member {raw[:200]!r} is {len(parts)} folders "
                      f"deep; at most {MAX_PATH_DEPTH} are accepted")
    return "/".join(parts)


class Tally:
    """Checks each entry as it is listed, so a hostile archive is refused before it is all read.

    Names are refused when repeated (a file twice, or a file where a folder is; repeated folder
    entries are harmless and allowed), and counts and declared sizes are capped as they add up.
    """

    def __init__(self, *, max_members: int, max_total_bytes: int) -> None:
        self.max_members, self.max_total_bytes = max_members, max_total_bytes
        self.files: set[str] = set()
        self.dirs: set[str] = set()
        self.folded: dict[str, str] = {}
        self.count = 0
        self.total = 0

    def add(self, name: str, is_dir: bool, size: int) -> None:
        """Count one entry (normalised ``name``); raise the moment it breaks a rule."""
        self.count += 1
        if self.count > self.max_members:
            raise reject("archive_too_large", f"the archive has more than {self.max_members} "
                          "entries; that many are not accepted")
        self.total += size
        if self.total > self.max_total_bytes:
            raise reject("archive_too_large", "the archive's files add up to more than "
                          f"{self.max_total_bytes} bytes unpacked (declared sizes); "
                          "that much is not accepted")
        parents = [name.rsplit("/", i)[0] for i in range(1, name.count("/") + 1)]
        clash = next((p for p in parents if p in self.files), None)
        if name in self.files or (not is_dir and name in self.dirs) or clash is not None:
            raise reject("unsafe_archive", f"archive member {name!r} appears twice (or a file and "
                          "a folder share a name); each name must appear once")
        for path in (name, *parents):
            self._fold(path)
        (self.dirs if is_dir else self.files).add(name)
        self.dirs.update(parents)

    def _fold(self, path: str) -> None:
        """Refuse ``path`` if another entry's path differs from it only by case (or Unicode form):
        on a case-insensitive file system one would overwrite or merge into the other."""
        key = unicodedata.normalize("NFC", path).casefold()
        other = self.folded.setdefault(key, path)
        if other != path:
            raise reject("unsafe_archive", f"archive members {other!r} and {path!r} differ only by "
                          "letter case (or Unicode normalisation); on a case-insensitive file "
                          "system one would overwrite the other: rename one of them")


def tar_members(path: Path, tally: Tally, on_file: FileReader | None = None) -> None:
    """List a tar's entries from their headers into ``tally``, refusing unsafe ones.

    Args:
        path: The archive.
        tally: Counts and checks each entry.
        on_file: Given each regular file's name and contents once its header passed, in the
            same pass (a compressed tar is decompressed once).

    Raises:
        UploadRejectedError: An unsafe entry or a cap passed.
    """
    with open_tar(path) as tar:
        for member in tar:
            name = safe_name(member.name)
            if member.issym() or member.islnk():
                raise reject("unsafe_archive", f"archive member {member.name!r} is a link; "
                              "only regular files and folders are accepted")
            if not (member.isfile() or member.isdir()):
                raise reject("unsafe_archive", f"archive member {member.name!r} is a device, "
                              "FIFO or other special file; only regular files and folders are accepted")
            tally.add(name, member.isdir(), member.size if member.isfile() else 0)
            contents = tar.extractfile(member) if member.isfile() and on_file else None
            if contents is not None and on_file is not None:
                with contents:
                    on_file(name, contents)


def zip_members(path: Path, tally: Tally, on_file: FileReader | None = None) -> None:
    """List a zip's entries from its central directory into ``tally``, refusing unsafe ones.

    Args:
        path: The archive.
        tally: Counts and checks each entry.
        on_file: Given each file's name and contents, once every entry passed the checks.

    Raises:
        UploadRejectedError: An unsafe entry or a cap passed.
    """
    try:
        zf = zipfile.ZipFile(path)
    except UnicodeDecodeError as exc:  # a name flagged UTF-8 that is not
        raise reject("unsafe_archive", "an archive member name is marked UTF-8 but is not valid "
                      f"UTF-8 ({exc.object[:200]!r}); re-create the archive with UTF-8 names") from exc
    with zf:
        files: list[tuple[str, zipfile.ZipInfo]] = []
        for info in zf.infolist():
            name = safe_name(zip_member_name(info))
            check_zip_info(info)
            tally.add(name, info.is_dir(), 0 if info.is_dir() else info.file_size)
            if not info.is_dir():
                files.append((name, info))
        for name, info in files:
            if on_file is not None:
                with zf.open(info) as contents:
                    on_file(name, contents)


def open_tar(path: Path) -> tarfile.TarFile:
    """Open a (compressed) tar whose names are read as UTF-8, invalid bytes kept as escapes."""
    return tarfile.open(path, mode="r:*", encoding="utf-8", errors="surrogateescape")


def check_zip_info(info: zipfile.ZipInfo) -> None:
    """Refuse links, special files, encrypted members and zip bombs (from the central directory)."""
    # Unix type bits, when the zip was written on Unix; 0 (no type) means a plain file.
    mode = stat.S_IFMT(info.external_attr >> 16)
    if mode and stat.S_ISLNK(mode):
        raise reject("unsafe_archive", f"archive member {info.filename!r} is a link; "
                      "only regular files and folders are accepted")
    if mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise reject("unsafe_archive", f"archive member {info.filename!r} is a special file")
    if info.flag_bits & 0x1:
        raise reject("unsafe_archive", f"archive member {info.filename!r} is encrypted; "
                      "send an archive without a password")
    # Declared sizes are what the caps use, so an absurd ratio is refused rather than trusted.
    if info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1) and info.file_size > 1024 * 1024:
        raise reject("unsafe_archive", f"archive member {info.filename!r} declares "
                      f"{info.file_size} bytes from {info.compress_size} compressed (more than "
                      f"{MAX_ZIP_RATIO}:1); such zip bombs are refused")


def archive_kind(path: Path) -> str:
    """Return ``zip`` or ``tar`` (plain or compressed) from the file's first bytes.

    Raises:
        UploadRejectedError: Neither (``invalid_archive``).
    """
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zX")):
        return "tar"  # compressed: whether a tar is inside is found while listing it
    try:
        if tarfile.is_tarfile(path):
            return "tar"
    except (OSError, tarfile.TarError):
        pass
    raise reject("invalid_archive", "the model file is not a tar, tar.gz or zip archive; "
                  "send the SavedModel folder as .tar.gz, .tgz, .tar or .zip")
