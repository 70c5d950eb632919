"""Per-job control groups: a memory limit with its peak read back, and a process/thread limit.

The worker makes one group per compile under its own group, in each controller it may write
to: cgroup v2 (``memory.max``, ``memory.peak``, ``pids.max``) when the unified hierarchy holds
the controllers, else cgroup v1 (``memory.limit_in_bytes``, ``memory.max_usage_in_bytes``,
``pids.max``). The compile process joins the groups before it executes anything (see
:func:`join`), so everything it starts is counted. Where no group can be made (an unprivileged
worker without delegation), :class:`JobCgroups` says so and the caller falls back to watching
resident memory (:func:`tree_rss`) and RLIMIT_NPROC.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CgroupSupport", "JobCgroups", "cgroup_support", "join", "tree_rss"]

logger = logging.getLogger(__name__)

_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class _Controller:
    """Where a controller's job groups go, and which files it uses there."""

    name: str
    parent: Path
    version: int


@dataclass(frozen=True)
class CgroupSupport:
    """The controllers this worker can make job groups in (``None``: not available)."""

    memory: _Controller | None
    pids: _Controller | None

    def describe(self) -> str:
        """A short text for the start-up log, such as ``memory cgroup v1, pids cgroup v1``."""
        parts = [f"{c.name} cgroup v{c.version} under {c.parent}" if c else f"no {name} cgroup"
                 for name, c in (("memory", self.memory), ("pids", self.pids))]
        return ", ".join(parts)


def _own_groups() -> dict[str, str]:
    """``controller → path`` of this process (``""`` for the v2 unified hierarchy)."""
    groups: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, names, path = line.split(":", 2)
            for name in names.split(",") if names else [""]:
                groups[name] = path
    return groups


def _probe(parent: Path, version: int, name: str) -> _Controller | None:
    """The controller if a child group can be made under ``parent`` (tried for real)."""
    if version == 2:
        try:
            enabled = (parent / "cgroup.subtree_control").read_text().split()
            if name not in enabled:
                (parent / "cgroup.subtree_control").write_text(f"+{name}")
        except OSError:
            return None
    probe = parent / f"kiln-probe-{os.getpid()}"
    try:
        probe.mkdir(exist_ok=True)
        ok = (probe / f"{name}.max" if version == 2 or name == "pids"
              else probe / "memory.limit_in_bytes").exists()
        probe.rmdir()
    except OSError:
        return None
    return _Controller(name, parent, version) if ok else None


def cgroup_support() -> CgroupSupport:
    """Find, and try, where this process may make memory and pids groups for its jobs."""
    groups = _own_groups()
    found: dict[str, _Controller | None] = {}
    for name in ("memory", "pids"):
        controller = None
        unified = groups.get("")
        if unified is not None and (_ROOT / "cgroup.controllers").exists():
            parent = _ROOT / unified.lstrip("/")
            if name in (_ROOT / "cgroup.controllers").read_text().split():
                controller = _probe(parent, 2, name)
        if controller is None and name in groups and (_ROOT / name).is_dir():
            controller = _probe(_ROOT / name / groups[name].lstrip("/"), 1, name)
        found[name] = controller
    return CgroupSupport(memory=found["memory"], pids=found["pids"])


def join(procs_files: list[str]) -> None:
    """Move the calling process into the groups (call it in the child before it executes)."""
    pid = str(os.getpid()).encode()
    for path in procs_files:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, pid)
        finally:
            os.close(fd)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _read_key(path: Path, key: str) -> int:
    """The number after ``key`` in a flat-keyed file such as ``memory.events``."""
    with contextlib.suppress(OSError, ValueError):
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    return 0


@dataclass
class JobCgroups:
    """The groups of one compile: made on creation, removed by :meth:`close`.

    Args:
        support: what :func:`cgroup_support` found.
        name: the groups' name (``kiln-job-<id>-<attempt>``).
        memory_bytes: the memory limit, or ``None`` for none.
        max_pids: the process/thread limit, or ``None`` for none.
    """

    support: CgroupSupport
    name: str
    memory_bytes: int | None
    max_pids: int | None
    memory: Path | None = field(default=None, init=False)
    pids: Path | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        mem, pids = self.support.memory, self.support.pids
        if mem is not None and self.memory_bytes is not None:
            self.memory = self._make(mem, self._memory_limits(mem.version, self.memory_bytes))
        if pids is not None and self.max_pids is not None:
            self.pids = self._make(pids, {"pids.max": str(self.max_pids)})

    @staticmethod
    def _memory_limits(version: int, limit: int) -> dict[str, str]:
        if version == 2:
            return {"memory.max": str(limit), "memory.swap.max": "0"}
        # Swap would let the compile use more than the limit (memsw counts memory + swap).
        return {"memory.limit_in_bytes": str(limit), "memory.memsw.limit_in_bytes": str(limit)}

    def _make(self, controller: _Controller, limits: dict[str, str]) -> Path | None:
        path = controller.parent / self.name
        try:
            path.mkdir(exist_ok=True)
            for key, value in limits.items():
                if (path / key).exists() or key in ("memory.max", "memory.limit_in_bytes",
                                                     "pids.max"):
                    (path / key).write_text(value)
        except OSError as exc:
            logger.warning("cannot make the %s group %s: %s", controller.name, path, exc)
            with contextlib.suppress(OSError):
                path.rmdir()
            return None
        return path

    @property
    def procs_files(self) -> list[str]:
        """The ``cgroup.procs`` files the compile process must join."""
        return [str(p / "cgroup.procs") for p in (self.memory, self.pids) if p is not None]

    def memory_peak(self) -> int | None:
        """The most memory the group used, in bytes (``None`` without a memory group)."""
        if self.memory is None or self.support.memory is None:
            return None
        name = "memory.peak" if self.support.memory.version == 2 else "memory.max_usage_in_bytes"
        return _read_int(self.memory / name)

    def oom_kills(self) -> int:
        """How many processes the kernel killed for crossing the memory limit."""
        if self.memory is None or self.support.memory is None:
            return 0
        name = "memory.events" if self.support.memory.version == 2 else "memory.oom_control"
        return _read_key(self.memory / name, "oom_kill")

    def pids_peak(self) -> int | None:
        """The most processes and threads the group held at once, if the kernel reports it."""
        return _read_int(self.pids / "pids.peak") if self.pids is not None else None

    def pids_refused(self) -> int:
        """How many forks or thread starts the limit refused."""
        return _read_key(self.pids / "pids.events", "max") if self.pids is not None else 0

    def close(self, wait_seconds: float = 5.0) -> None:
        """Kill whatever is left in the groups and remove them."""
        for path in (self.memory, self.pids):
            if path is None:
                continue
            deadline = time.monotonic() + wait_seconds
            while True:
                left = self._members(path)
                for pid in left:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
                try:
                    path.rmdir()
                    break
                except OSError as exc:
                    if time.monotonic() >= deadline:
                        logger.warning("cannot remove the group %s: %s", path, exc)
                        break
                    time.sleep(0.05)

    @staticmethod
    def _members(path: Path) -> list[int]:
        with contextlib.suppress(OSError):
            return [int(x) for x in (path / "cgroup.procs").read_text().split()]
        return []


def tree_rss(pgid: int) -> int:
    """Resident memory, in bytes, of every process in the process group ``pgid``.

    The fallback where no memory group can be made: a compile that starts its own session
    escapes it, which is why a memory group is preferred.
    """
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(entry.path, "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[2]) == pgid:  # fields: state ppid pgrp session ...
                total += int(Path(entry.path, "statm").read_text().split()[1]) * page
    return total
