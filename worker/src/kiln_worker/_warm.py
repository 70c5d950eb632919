"""Compile processes, and the one each pool process keeps started ahead of its next job.

Importing TensorFlow takes seconds, most of a small model's job. So a worker pool process keeps
one compile process started ahead (``KILN_WORKER_WARM_PROCESSES``, on by default): it runs in a
fresh job folder of its own (``kiln-job-warm-<owner>-…``), inside the sandbox, in its own memory
and pids groups and with the resource limits of the longest job allowed, imports TensorFlow and
Kiln, runs one tiny XLA compile of a constant, says ``ready`` and waits on stdin. Nothing of any
job has run in it yet.

The next job *adopts* that folder: the worker fetches the upload into it (the sandbox binds the
folder, so the waiting process sees the files appear) and writes the job's
:class:`~kiln_worker._protocol.Handoff` to its stdin; the process lowers its resource limits to
the job's, reads the spec and runs that one job, then exits like any compile process. One job
per process, as before: no state crosses from one job to the next. A job that finds no process
waiting (switched off, the first job, or the waiting one died) starts one in its own folder and
says ``starting TensorFlow`` meanwhile.

Started from the pool process's main thread (its death signal is tied to that thread), and
discarded when the pool process shuts down; a worker killed outright takes it along (the
sandbox dies with its parent), and its folder and groups are swept like any job's.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kiln_worker._context import WorkerContext
from kiln_worker._job_dirs import PREFIX, job_dir, owner_tag
from kiln_worker._limits import CompileLimits
from kiln_worker._protocol import Handoff, parse_event
from kiln_worker._sandbox import Isolation, isolation
from kiln_worker._supervise import ChildProcess, child_environment

__all__ = ["AHEAD_TAG", "CompileProcess", "WarmSlot", "start_compile_process"]

logger = logging.getLogger(__name__)

#: the job id part of the folder of a process started ahead of its job
AHEAD_TAG = "warm"
#: the file, beside the compile's folder, naming the job that adopted a warm folder
JOB_FILE = "job"


@dataclass
class CompileProcess:
    """A compile process waiting for its job on stdin, with the groups that limit it.

    Attributes:
        child: the process (the sandbox's outer process when sandboxed).
        limits: its memory and pids groups and resource limits.
        started: ``time.monotonic()`` at its start.
        ready: it said ``ready`` (TensorFlow is loaded), as seen by :meth:`take_ready`.
    """

    child: ChildProcess
    limits: CompileLimits
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    _discarded: bool = field(default=False, repr=False)
    _early: list[tuple[str, str]] = field(default_factory=list, repr=False)

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.child.poll() is None

    def take_ready(self) -> list[tuple[str, str]]:
        """The lines it wrote so far (for the job log), noting whether one said ``ready``."""
        self._read(timeout=0)
        lines, self._early = self._early, []
        return lines

    def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``ready``; ``False`` if it did not come (or died)."""
        deadline = time.monotonic() + timeout
        while not self.ready and self.alive() and time.monotonic() < deadline:
            self._read(timeout=0.1)
        return self.ready

    def _read(self, timeout: float) -> None:
        while (item := self.child.next_line(timeout=timeout)) is not None:
            event = parse_event(item[1]) if item[0] == "stdout" else None
            if event is not None and event.get("event") == "ready":
                self.ready = True
                return
            self._early.append(item)
            timeout = 0

    def hand_over(self, spec_path: Path, *, attempt: int, timeout_seconds: int,
                  environment: Mapping[str, str] | None = None) -> None:
        """Give the process its job: the spec, the job's own resource limits, and the variables
        of the job's trace context (see :data:`~kiln_worker._protocol.HANDOFF_VARIABLES`)."""
        self.limits.timeout_seconds = timeout_seconds
        handoff = Handoff(spec=str(spec_path), attempt=attempt, rlimits=self.limits.rlimits(),
                          environment=dict(environment or {}))
        with contextlib.suppress(OSError):  # it died: its exit status tells the job why
            self.child.send(handoff.encode())

    def discard(self) -> None:
        """Stop the process (and anything it left) and remove its groups; once is enough."""
        if self._discarded:
            return
        self._discarded = True
        try:
            self.child.kill_group(0)
            self.child.finish(drain_seconds=1.0)
        finally:
            self.limits.close()


def start_compile_process(ctx: WorkerContext, found: Isolation, box: Path, *, name: str,
                          timeout_seconds: int, ahead: bool = False) -> CompileProcess:
    """Start ``python -m kiln_worker.runner --wait BOX`` in the sandbox, with its limits.

    Args:
        ctx: the worker's settings.
        found: the worker's sandbox and control groups.
        box: the folder the compile may write (it holds ``home/``, its HOME and TMPDIR).
        name: its groups' name (``kiln-job-…-<owner>``, swept once the owner is gone).
        timeout_seconds: bounds its CPU time until the job's own limits are handed over.
        ahead: started before any job wants it: it rehearses a compile while it waits
            (``--rehearse``), which a job waiting for its process would only wait for.
    """
    opts, sandbox = ctx.options, found.sandbox
    home = box / "home"
    home.mkdir(parents=True, exist_ok=True)
    sandbox.prepare(box)
    env = child_environment(home)
    env["KILN_LOG_FORMAT"] = ctx.settings.log_format  # the compile logs like the worker
    if opts.test_hook_child_sleep_seconds > 0:  # TEST HOOK, off by default
        env["KILN_WORKER_TEST_HOOK_CHILD_SLEEP_SECONDS"] = str(opts.test_hook_child_sleep_seconds)
    limits = CompileLimits(opts, found.cgroups, name, timeout_seconds)
    try:
        child = ChildProcess(
            sandbox.command([sys.executable, "-m", "kiln_worker.runner", "--wait", str(box),
                             *(["--rehearse"] if ahead else [])], box),
            env=env, cwd=box, rlimits=limits.rlimits(), cgroups=limits.procs_files, stdin=True)
    except BaseException:
        limits.close()
        raise
    return CompileProcess(child=child, limits=limits)


@dataclass
class _Waiting:
    folder: tempfile.TemporaryDirectory[str]
    process: CompileProcess


class WarmSlot:
    """The compile process a pool process keeps started ahead of its next job (at most one)."""

    def __init__(self) -> None:
        self._waiting: _Waiting | None = None
        self._count = 0

    def fill(self, ctx: WorkerContext) -> None:
        """Start a process ahead, unless one waits or ``KILN_WORKER_WARM_PROCESSES`` is off.

        Call it from the thread that lives as long as the pool process (its main thread).
        A failure to start is logged: the next job then starts its own process.
        """
        if not ctx.options.warm_processes or self._waiting is not None:
            return
        folder = job_dir(AHEAD_TAG, ctx.options.work_dir)
        try:
            self._count += 1
            name = f"{PREFIX}{AHEAD_TAG}{self._count}-{owner_tag()}"
            process = start_compile_process(
                ctx, isolation(ctx.settings, ctx.options), Path(folder.name) / "compile",
                name=name, timeout_seconds=ctx.settings.max_timeout_seconds, ahead=True)
        except Exception as exc:
            logger.warning("could not start a compile process ahead (%s); the next job starts "
                           "its own", exc)
            folder.cleanup()
            return
        self._waiting = _Waiting(folder, process)
        logger.info("compile process %d started ahead in %s", process.child.pid, folder.name)

    @property
    def waiting(self) -> CompileProcess | None:
        """The process waiting for the next job, if any."""
        return self._waiting.process if self._waiting is not None else None

    def take(self, job_id: str) -> tuple[tempfile.TemporaryDirectory[str], CompileProcess] | None:
        """The waiting process and its folder, now the job's; ``None`` if none is alive."""
        waiting, self._waiting = self._waiting, None
        if waiting is None:
            return None
        if not waiting.process.alive():
            logger.warning("the compile process started ahead (%d) had exited; job %s starts "
                           "its own", waiting.process.child.pid, job_id)
            self._drop(waiting)
            return None
        (Path(waiting.folder.name) / JOB_FILE).write_text(job_id)
        return waiting.folder, waiting.process

    def close(self) -> None:
        """Stop the waiting process and remove its folder (the pool process is shutting down)."""
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            self._drop(waiting)

    @staticmethod
    def _drop(waiting: _Waiting) -> None:
        try:
            waiting.process.discard()
        finally:
            waiting.folder.cleanup()
