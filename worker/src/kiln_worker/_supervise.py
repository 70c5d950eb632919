"""Run a child in its own process group and read its output lines while it runs.

Used by the compile task for ``python -m kiln_worker.runner``; knows nothing about jobs. The
child gets a new session (so it and anything it starts form one process group that can be
killed as a whole) and a scrubbed environment built by :func:`child_environment`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import queue
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from kiln_worker._cgroups import join

__all__ = ["ChildProcess", "apply_rlimits", "child_environment"]

logger = logging.getLogger(__name__)

#: variables a compile child may inherit: locale, time zone and TensorFlow/XLA tuning. Anything
#: else (database and broker URLs, cloud credentials, KILN_* settings) stays with the worker.
_PASS_VARIABLES = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "OMP_NUM_THREADS", "XLA_FLAGS")
_PASS_PREFIXES = ("TF_",)


def child_environment(home: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a compile child: an allowlist of ``base``, with ``home`` as HOME/TMPDIR.

    Args:
        home: the job's private directory, used as HOME and TMPDIR so nothing lands elsewhere.
        base: the environment to filter (default: this process's).

    Returns:
        The new environment.
    """
    source = os.environ if base is None else base
    env = {k: v for k, v in source.items() if k in _PASS_VARIABLES or k.startswith(_PASS_PREFIXES)}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update(
        HOME=str(home),
        TMPDIR=str(home),
        PYTHONUNBUFFERED="1",
        PYTHONDONTWRITEBYTECODE="1",
        TF_USE_LEGACY_KERAS="1",
    )
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # No GPU probing on workers: the xla backend compiles for the CPU, and probing is slow.
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env


_PR_SET_PDEATHSIG = 1
#: longest line of a compile's output kept (the rest of a longer line is dropped)
MAX_LINE_BYTES = 64 * 1024
#: what a reader queues when its pipe ends (never returned by next_line or finish)
_CLOSED = ("", "")


def apply_rlimits(limits: Mapping[int, int]) -> None:
    """Set each resource limit (soft and hard) in this process, never above its current hard one.

    Used before a compile child executes, and by a child started ahead of its job when it gets
    the job's own limits (lowering is always allowed; raising a hard limit is not).
    """
    for which, value in limits.items():
        hard = resource.getrlimit(which)[1]
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value))


def _child_preexec(rlimits: Mapping[int, int], cgroups: Sequence[str] = ()
                   ) -> Callable[[], None]:
    """A ``preexec_fn``: control groups, resource limits, SIGKILL when the parent dies (Linux).

    The child joins its control groups (``cgroup.procs`` files) before it executes anything,
    so every process and thread it starts is counted against their limits.

    The child has its own session, so a worker killed outright would otherwise leave the
    compile running with nobody to report it; with PR_SET_PDEATHSIG it dies with the worker.
    Core dumps are off: a crashing TensorFlow would write gigabytes into the job directory.
    """
    limits = {resource.RLIMIT_CORE: 0, **rlimits}
    libc = None
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    parent = os.getpid()

    def preexec() -> None:
        join(list(cgroups))
        apply_rlimits(limits)
        if libc is not None:
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
            if os.getppid() != parent:  # the parent died before prctl took effect
                os._exit(1)

    return preexec


class ChildProcess:
    """A child process in a new session whose stdout and stderr lines are queued as they come.

    Args:
        argv: the command.
        env: its environment.
        cwd: its working directory.
        rlimits: resource limits (``resource.RLIMIT_*`` → value) set in the child.
        cgroups: ``cgroup.procs`` files of the control groups the child joins.
        stdin: give the child a pipe on stdin, written once by :meth:`send` (else ``/dev/null``).
    """

    def __init__(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path,
                 rlimits: Mapping[int, int] | None = None, cgroups: Sequence[str] = (),
                 stdin: bool = False) -> None:
        self._lines: queue.Queue[tuple[str, str]] = queue.Queue()
        self.proc = subprocess.Popen(
            list(argv), stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=dict(env), cwd=str(cwd), start_new_session=True,
            preexec_fn=_child_preexec(rlimits or {}, cgroups),
        )
        self.pid = self.proc.pid
        self._closed = 0  # pipes at their end (each reader queues _CLOSED there)
        self._readers = [
            threading.Thread(target=self._pump, args=(name, pipe), daemon=True)
            for name, pipe in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr))
            if pipe is not None
        ]
        for reader in self._readers:
            reader.start()

    def _pump(self, name: str, pipe: IO[bytes]) -> None:
        # A line is cut at MAX_LINE_BYTES and the rest of it dropped: a model printing one
        # endless line must not fill the worker's memory nor the job log.
        skipping = False
        with pipe:
            for raw in iter(lambda: pipe.readline(MAX_LINE_BYTES), b""):
                complete = raw.endswith(b"\n")
                if not skipping:
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    cut = "" if complete else f" [… line cut at {MAX_LINE_BYTES} bytes]"
                    self._lines.put((name, line + cut))
                skipping = not complete
        self._lines.put(_CLOSED)  # wakes next_line: the process is ending

    def send(self, text: str) -> None:
        """Write ``text`` to the child's stdin and close it (the child reads it once).

        Raises:
            OSError: the child is gone (its stdin pipe is broken).
        """
        pipe = self.proc.stdin
        if pipe is None:
            raise OSError("the child has no stdin pipe")
        try:
            pipe.write(text.encode())
            pipe.flush()
        finally:
            with contextlib.suppress(OSError):
                pipe.close()

    def next_line(self, timeout: float) -> tuple[str, str] | None:
        """The next ``(stream, line)`` read, or ``None`` if none came within ``timeout`` seconds."""
        try:
            item = self._lines.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is not _CLOSED:
            return item
        self._closed += 1
        if self._closed == len(self._readers):  # no more output: wait for the exit instead
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        return None

    def poll(self) -> int | None:
        """The exit status (negative: killed by that signal), or ``None`` while running."""
        return self.proc.poll()

    def kill_group(self, grace_seconds: float) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL after ``grace_seconds``."""
        self._signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        while self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        self._signal_group(signal.SIGKILL)
        self.proc.wait()

    def finish(self, drain_seconds: float = 5.0) -> list[tuple[str, str]]:
        """After exit: kill any leftover of the group, and return the lines not yet taken."""
        self._signal_group(signal.SIGKILL)  # grandchildren the compile may have left behind
        self.proc.wait()
        for reader in self._readers:
            reader.join(timeout=drain_seconds)
        rest: list[tuple[str, str]] = []
        while True:
            try:
                item = self._lines.get_nowait()
            except queue.Empty:
                return rest
            if item is not _CLOSED:
                rest.append(item)

    def _signal_group(self, sig: signal.Signals) -> None:
        # The child leads its own session, so its pgid is its pid; a missing group is gone.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)
