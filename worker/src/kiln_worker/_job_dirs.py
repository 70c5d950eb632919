"""Job folders (``kiln-job-*``) and per-job control groups, and sweeping those nobody owns.

A job folder's name carries the pid and start time of the worker process that made it
(``kiln-job-<job>-p<pid>.<start>-<random>``), so a worker starting up, and the reconciler of
every worker, can tell the leftovers of a killed worker (its process is gone) from the folders
of compiles running now, without trusting anything inside the folder (the compile may write
there). Control groups are named the same way and swept alike once empty.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

from kiln_worker._cgroups import CgroupSupport

__all__ = [
    "UnsafeOutputError", "compiled_file", "is_orphaned", "job_dir", "owner_tag",
    "sweep_job_cgroups", "sweep_job_dirs",
]

logger = logging.getLogger(__name__)

PREFIX = "kiln-job-"
_OWNER = re.compile(r"-p(\d+)\.(\d+)(?:-[A-Za-z0-9_]*)?$")


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (``None``: no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()[19]


def owner_tag() -> str:
    """``p<pid>.<start time>`` of this process: unique on the host even when pids are reused."""
    return f"p{os.getpid()}.{_start_time(os.getpid()) or 0}"


def job_dir(job_id: str, parent: Path | None) -> tempfile.TemporaryDirectory[str]:
    """A fresh job folder owned, by name, by this process (removed when the context ends)."""
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix=f"{PREFIX}{job_id}-{owner_tag()}-", dir=parent)


class UnsafeOutputError(Exception):
    """A file the compile left is a link or not a regular file (the worker will not read it)."""


def compiled_file(box: Path, path: Path) -> Path:
    """``path``, checked to be a regular file under ``box`` reached through no symbolic link.

    The compile may write anything in its folder: a link there, read by the worker (root),
    would publish a file of the host. Checked after the compile's processes are gone.

    Raises:
        UnsafeOutputError: a component is a link, or the file is not a regular file.
        FileNotFoundError: the file is missing.
    """
    current = box
    for part in path.relative_to(box).parts:
        current = current / part
        if current.is_symlink():
            raise UnsafeOutputError(f"the compile left a symbolic link at "
                                    f"{current.relative_to(box)}; Kiln does not follow it")
    if not stat.S_ISREG(os.lstat(current).st_mode):
        raise UnsafeOutputError(f"{current.relative_to(box)} is not a regular file")
    return path


def is_orphaned(name: str) -> bool:
    """Whether ``name`` is a job folder (or cgroup) whose owning process is gone."""
    match = _OWNER.search(name) if name.startswith(PREFIX) else None
    if match is None:
        return False  # not ours to judge (another version's folder, or not a job folder)
    pid, start = int(match.group(1)), match.group(2)
    return _start_time(pid) != start


def sweep_job_dirs(parent: Path | None) -> list[str]:
    """Remove the job folders under ``parent`` (default: the temporary dir) whose worker is gone.

    Returns:
        The names removed.
    """
    root = parent if parent is not None else Path(tempfile.gettempdir())
    removed: list[str] = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(root):
            if entry.is_dir(follow_symlinks=False) and is_orphaned(entry.name):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.name)
    if removed:
        logger.info("removed %d job folders left by stopped workers: %s", len(removed),
                    ", ".join(removed))
    return removed


def sweep_job_cgroups(support: CgroupSupport) -> int:
    """Remove the empty per-job control groups of workers that are gone; returns how many."""
    removed = 0
    for controller in (support.memory, support.pids):
        if controller is None:
            continue
        with contextlib.suppress(OSError):
            for entry in os.scandir(controller.parent):
                if entry.is_dir() and is_orphaned(entry.name):
                    with contextlib.suppress(OSError):  # still has processes: next time
                        os.rmdir(entry.path)
                        removed += 1
    return removed
