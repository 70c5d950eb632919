"""The compile sandbox: what a compile process may see of the worker's machine.

With ``KILN_WORKER_SANDBOX=bubblewrap`` (the default) each compile runs under bubblewrap
(``bwrap``) in its own mount, PID, network, IPC and UTS namespaces. Its file system is an empty
read-only root holding, read-only, ``/usr`` (system libraries and tools), the few ``/etc`` files
the dynamic linker reads and the Python environment (the venv, the Python install it links to,
the folders on ``sys.path``), plus, read-write, its own job folder; ``/proc`` is its own PID
namespace's and ``/dev`` a minimal one. So the data dir, the artifact store, the database, the
keys, other jobs' folders, ``/etc/shadow`` and every other process's environment do not exist
for it, and it has no network but its own loopback. A worker running as root makes the compile
drop to an unprivileged user (``KILN_WORKER_SANDBOX_UID``, ``nobody`` by default) inside;
otherwise the compile keeps the worker's own unprivileged user, in a user namespace.

``KILN_WORKER_SANDBOX=none`` runs compiles without namespaces (environment scrubbed, resource
limits only): the worker refuses to start without a working sandbox unless told so.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kiln_worker._cgroups import CgroupSupport, cgroup_support

if TYPE_CHECKING:
    from kiln_service.config import Settings
    from kiln_worker.config import WorkerSettings

__all__ = [
    "SANDBOX_MODES", "Isolation", "Sandbox", "SandboxUnavailableError", "isolation",
    "resolve_sandbox",
]

logger = logging.getLogger(__name__)

#: ``KILN_WORKER_SANDBOX`` values: full isolation, or the explicit opt-out
SANDBOX_MODES = ("bubblewrap", "none")
#: read-only system paths (absent ones are skipped; symlinks such as ``/lib → usr/lib`` kept)
_SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime")
_SETPRIV = "/usr/bin/setpriv"


class SandboxUnavailableError(RuntimeError):
    """The configured sandbox cannot run on this machine (the message says what to do)."""


@dataclass(frozen=True)
class Sandbox:
    """How compile processes are isolated (built once per worker by :func:`resolve_sandbox`).

    Attributes:
        mode: ``bubblewrap`` or ``none``.
        bwrap: the bubblewrap binary.
        uid: the host user a root worker's compiles run as (``None``: the worker's own).
        gid: its group.
        read_only: the paths bound read-only besides the system ones.
    """

    mode: str
    bwrap: str | None = None
    uid: int | None = None
    gid: int | None = None
    read_only: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line for the start-up log and ``GET /readyz``."""
        if self.mode == "none":
            return "none (KILN_WORKER_SANDBOX=none: compiles see the worker's files and network)"
        who = f"uid {self.uid}" if self.uid is not None else f"the worker's uid {os.getuid()}"
        return (f"bubblewrap ({self.bwrap}): mount, pid, net, ipc and uts namespaces; "
                f"compiles run as {who} and see read-only {', '.join(self.read_only)}")

    def prepare(self, job_dir: Path) -> None:
        """Give the job folder to the compile's user (a root worker's compile drops to it)."""
        if self.mode == "none" or self.uid is None:
            return
        for root, dirs, files in os.walk(job_dir):
            for name in (root, *(os.path.join(root, n) for n in (*dirs, *files))):
                os.lchown(name, self.uid, self.gid if self.gid is not None else self.uid)

    def command(self, argv: Sequence[str], job_dir: Path) -> list[str]:
        """``argv`` wrapped to run inside the sandbox with ``job_dir`` as its only writable place."""
        if self.mode == "none":
            return list(argv)
        assert self.bwrap is not None
        cmd = [self.bwrap, "--die-with-parent", "--unshare-pid", "--unshare-net", "--unshare-ipc",
               "--unshare-uts", "--unshare-cgroup-try", "--hostname", "kiln-compile",
               "--tmpfs", "/"]
        if self.uid is None:
            cmd.insert(2, "--unshare-user")
        made: set[str] = {"/"}
        for path in _system_paths():
            if os.path.islink(path):
                cmd += ["--symlink", os.readlink(path), path]
            else:
                cmd += [*_parents(path, made), "--ro-bind", path, path]
        for path in self.read_only:
            cmd += [*_parents(path, made), "--ro-bind", path, path]
        job = str(job_dir)
        cmd += [*_parents(job, made), "--bind", job, job, "--proc", "/proc", "--dev", "/dev",
                "--remount-ro", "/", "--chdir", job]
        if self.uid is not None:  # drop root for good before anything of the job runs
            gid = self.gid if self.gid is not None else self.uid
            cmd += [_SETPRIV, f"--reuid={self.uid}", f"--regid={gid}", "--clear-groups",
                    "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
        return cmd + list(argv)

    def exit_status(self, status: int) -> int:
        """The compile's exit status as ``subprocess`` reports it (negative: killed by a signal).

        bubblewrap reports a child killed by signal N as exit status 128 + N.
        """
        if self.mode != "none" and 128 < status < 128 + 65:
            return -(status - 128)
        return status


def _system_paths() -> list[str]:
    return [p for p in (*_SYSTEM_PATHS, *_ETC_FILES) if os.path.lexists(p)]


def _parents(path: str, made: set[str]) -> list[str]:
    """``--dir`` options making ``path``'s missing ancestors mode 0755 (bwrap copies 0700 from
    a source such as ``/root`` otherwise, and the compile's user could not pass through)."""
    out: list[str] = []
    parts = Path(path).parts
    for i in range(2, len(parts)):
        parent = str(Path(*parts[:i]))
        if parent not in made:
            made.add(parent)
            out += ["--perms", "0755", "--dir", parent]
    return out


def python_paths() -> list[str]:
    """The folders the compile's Python needs: its install, the venv and ``sys.path``."""
    candidates = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                  str(Path(os.path.realpath(sys.executable)).parent.parent),
                  *(p for p in sys.path if p and os.path.isdir(p))]
    paths: list[str] = []
    for path in sorted({os.path.realpath(p) for p in candidates} | set(candidates), key=len):
        if not os.path.isdir(path) or path.startswith(("/usr/", "/proc")) or path == "/usr":
            continue
        if not any(path == p or path.startswith(p.rstrip("/") + "/") for p in paths):
            paths.append(path)
    return paths


def _check_not_exposing(paths: Iterable[str], protected: Iterable[Path]) -> None:
    for path in paths:
        for secret in protected:
            s = os.path.realpath(secret)
            if s == path or s.startswith(path.rstrip("/") + "/") or path == "/":
                raise SandboxUnavailableError(
                    f"the Python environment folder {path} contains {secret}, which compiles "
                    "must not see; install Kiln outside the data dir and the work dir")


def resolve_sandbox(mode: str, *, uid: int, protected: Iterable[Path]) -> Sandbox:
    """Check that the configured sandbox works here, by running a probe inside it.

    Args:
        mode: ``KILN_WORKER_SANDBOX``.
        uid: ``KILN_WORKER_SANDBOX_UID``, the user a root worker's compiles run as.
        protected: folders compiles must never see (data dir, artifact store, work dir).

    Returns:
        The sandbox to run compiles in.

    Raises:
        SandboxUnavailableError: bubblewrap is missing or cannot make its namespaces here.
    """
    if mode == "none":
        return Sandbox(mode="none")
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailableError(
            "bubblewrap (bwrap) is not installed; install it (apt-get install bubblewrap) or set "
            "KILN_WORKER_SANDBOX=none to run compiles without isolation (unsafe for models "
            "you do not trust)")
    root = os.geteuid() == 0
    if root and not os.path.exists(_SETPRIV):
        raise SandboxUnavailableError(f"{_SETPRIV} (util-linux) is missing; it drops root in "
                                      "the sandbox")
    paths = python_paths()
    _check_not_exposing(paths, protected)
    sandbox = Sandbox(mode="bubblewrap", bwrap=bwrap, uid=uid if root else None,
                      gid=uid if root else None, read_only=tuple(paths))
    _probe(sandbox)
    return sandbox


_PROBE = ("import os, socket\n"
          "assert not os.path.exists('/etc/shadow'), 'sees /etc/shadow'\n"
          "try:\n    socket.create_connection(('1.1.1.1', 53), timeout=2)\n"
          "except OSError:\n    pass\nelse:\n    raise SystemExit('has network')\n"
          "print(os.getuid())\n")


def _probe(sandbox: Sandbox) -> None:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="kiln-sandbox-probe-") as tmp:
        sandbox.prepare(Path(tmp))
        argv = sandbox.command([sys.executable, "-I", "-c", _PROBE], Path(tmp))
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                                  env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SandboxUnavailableError(f"bubblewrap could not run: {exc}") from exc
    want = str(sandbox.uid if sandbox.uid is not None else os.getuid())
    if done.returncode != 0 or done.stdout.strip() != want:
        raise SandboxUnavailableError(
            "bubblewrap cannot isolate compiles on this machine (exit status "
            f"{done.returncode}: {(done.stderr or done.stdout).strip()[-500:]}); allow user "
            "namespaces (or run the worker as root / with CAP_SYS_ADMIN), or set "
            "KILN_WORKER_SANDBOX=none to run compiles without isolation")


@dataclass(frozen=True)
class Isolation:
    """What this worker process isolates and limits its compiles with."""

    sandbox: Sandbox
    cgroups: CgroupSupport

    def describe(self) -> str:
        """One line for the start-up log."""
        return f"compile isolation: {self.sandbox.describe()}; limits: {self.cgroups.describe()}"


_CACHE: dict[tuple[object, ...], Isolation] = {}


def protected_paths(settings: Settings, options: WorkerSettings) -> list[Path]:
    """Folders no compile may see: the data dir, the artifact store, the database, the work dir."""
    paths = [settings.data_dir]
    for url in (settings.resolved_storage_url, settings.resolved_database_url):
        for prefix in ("file://", "sqlite:///"):
            if url.startswith(prefix):
                path = Path(url[len(prefix):].split("?", 1)[0])
                paths.append(path if prefix == "file://" else path.parent)
    if options.work_dir is not None:
        paths.append(options.work_dir)
    return [p.resolve() for p in paths]


def isolation(settings: Settings, options: WorkerSettings) -> Isolation:
    """The isolation of this process's compiles, checked once per process and settings.

    Raises:
        SandboxUnavailableError: The configured sandbox does not work here.
    """
    protected = tuple(protected_paths(settings, options))
    key = (options.sandbox, options.sandbox_uid, protected)
    if key not in _CACHE:
        sandbox = resolve_sandbox(options.sandbox, uid=options.sandbox_uid, protected=protected)
        _CACHE[key] = Isolation(sandbox=sandbox, cgroups=cgroup_support())
    return _CACHE[key]
