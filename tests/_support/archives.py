"""Re-packing model archives (the compile cache must see the same content however packed)."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

__all__ = ["tar_gz_as_zip"]


def tar_gz_as_zip(archive: Path, dest: Path) -> Path:
    """Write the files of ``archive`` (a .tar.gz) to ``dest`` as a .zip, in reverse order."""
    with tarfile.open(archive) as tar, zipfile.ZipFile(dest, "w") as zf:
        members = [m for m in tar.getmembers() if m.isfile()]
        for member in reversed(members):
            handle = tar.extractfile(member)
            if handle is None:
                raise ValueError(f"cannot read {member.name} from {archive}")
            zf.writestr(member.name, handle.read())
    return dest
