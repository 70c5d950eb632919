"""Running the compile child of one attempt: sandbox, limits, streaming, lease and cancellation.

A mixin of :class:`kiln_worker._compile_job.CompileAttempt`, kept apart to keep that module
short: it hands the job to the compile process started ahead in the job's folder, or starts
``python -m kiln_worker.runner`` inside the worker's sandbox with the job's limits, streams its lines to the job log, renews the lease, watches for cancellation, the time
limit and (without a memory cgroup) resident memory, and records which limit was crossed.
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

from kiln_client.models import Failure, Stage
from kiln_service.errors import StoreError
from kiln_service.stores.jobs import JobRecord
from kiln_service.tracing import inject, traced
from kiln_worker._context import WorkerContext
from kiln_worker._job_dirs import PREFIX, owner_tag
from kiln_worker._job_io import LogBuffer, ProgressBuffer, take_line
from kiln_worker._limits import CRASH_MARK, CompileLimits
from kiln_worker._sandbox import Isolation
from kiln_worker._supervise import ChildProcess
from kiln_worker._tracing import ChildSpans
from kiln_worker._warm import CompileProcess, start_compile_process

__all__ = ["SupervisedRun"]

logger = logging.getLogger(__name__)


class SupervisedRun:
    """The running part of an attempt (attributes set by ``CompileAttempt.__init__``)."""

    ctx: WorkerContext
    job: JobRecord
    process: CompileProcess | None
    tmp: Path
    box: Path
    home: Path
    fence: int
    logs: LogBuffer
    progress: ProgressBuffer
    timings: dict[str, float]
    isolation: Isolation
    limit_failure: Failure | None
    memory_group: bool
    peaks: dict[str, int | None]
    _started: float
    child_spans: ChildSpans | None = None

    # -- running -----------------------------------------------------------------------------

    @traced("kiln.compile_process")
    def _supervise(self, spec_path: Path) -> int | str:
        """Run the child; return its exit status, or ``cancelled`` / ``timeout`` / ``lost``."""
        sandbox = self.isolation.sandbox
        self.child_spans = ChildSpans()
        process = self._compile_process()
        self.process = None  # ours to end from here on
        child, limits = process.child, process.limits
        self.memory_group = limits.groups.memory is not None
        stop: str | None = None
        try:
            process.hand_over(spec_path, attempt=self.job.attempts,
                              timeout_seconds=self.job.timeout_seconds,
                              environment=inject({}, upper=True))  # TRACEPARENT: this span
            stop = self._watch(child, limits)
            status = sandbox.exit_status(int(child.proc.returncode))
            self.peaks = limits.peaks()
            self.limit_failure = limits.failure(status, self.box) if stop is None else None
            if stop == "memory":
                self.limit_failure, stop = limits.failure(-signal.SIGKILL, self.box), None
        finally:
            process.discard()
        self.logs.add(f"[kiln] compile process {child.pid} ended ({stop or status})"
                      f" after {self.timings['child_seconds']:.2f} s")
        return stop if stop is not None else status

    def _compile_process(self) -> CompileProcess:
        """The process started ahead in this job's folder, else one started now."""
        process, sandbox = self.process, self.isolation.sandbox
        limit = f"time limit {self.job.timeout_seconds} s"
        if process is not None:
            # Files fetched since it started go to the compile's user too (a root worker's).
            sandbox.prepare(self.box)
            for stream, line in process.take_ready():  # what it wrote while it waited
                self._take(stream, line)
            age = time.monotonic() - process.started
            state = "TensorFlow loaded" if process.ready else "TensorFlow still starting"
            self.logs.add(f"[kiln] compile process {process.child.pid} ({sandbox.mode} sandbox) "
                          f"takes the job: started {age:.1f} s ahead, {state}; {limit}")
            if not process.ready:
                self.progress.set(Stage.PREPARING.value, 0.015, "starting TensorFlow", force=True)
            return process
        self.progress.set(Stage.PREPARING.value, 0.015, "starting TensorFlow", force=True)
        process = start_compile_process(
            self.ctx, self.isolation, self.box, timeout_seconds=self.job.timeout_seconds,
            name=f"{PREFIX}{self.job.id}-a{self.job.attempts}-{owner_tag()}")
        self.logs.add(f"[kiln] compile process {process.child.pid} started "
                      f"({sandbox.mode} sandbox); {limit}")
        return process

    def _watch(self, child: ChildProcess, limits: CompileLimits) -> str | None:
        """Follow the child to its end; ``cancelled``/``timeout``/``lost``/``memory`` if stopped."""
        opts = self.ctx.options
        start = time.monotonic()
        deadline = start + self.job.timeout_seconds
        next_poll, next_beat = start + opts.poll_seconds, start + opts.lease_seconds / 3
        stop: str | None = None
        try:
            while stop is None:
                item = child.next_line(timeout=0.1)
                if item is not None:
                    self._take(*item)
                now = time.monotonic()
                self._flush_quietly(now)
                if child.poll() is not None:
                    break
                if now >= deadline:
                    stop = "timeout"
                    break
                if now >= next_poll or now >= next_beat:
                    stop = "memory" if limits.watch_memory(child.pid) else \
                        self._check_in(now >= next_beat)
                    next_poll = now + opts.poll_seconds
                    if now >= next_beat:
                        next_beat = now + opts.lease_seconds / 3
            if stop is not None:
                child.kill_group(opts.kill_grace_seconds)
        except BaseException:
            child.kill_group(0)  # never leave a compile running behind a crashed supervisor
            raise
        finally:
            for stream, line in child.finish():
                self._take(stream, line)
            self.progress.flush()
            self.logs.close()
        self.timings["prepare_seconds"] = start - self._started
        self.timings["child_seconds"] = time.monotonic() - start
        return stop

    def _check_in(self, beat: bool) -> str | None:
        """Flush, look for cancellation and renew the lease; tolerate a job store outage.

        While the database is down the compile goes on: the lease is still ours until it
        lapses, and if it does the reconciler hands the job on and this attempt's fence loses.
        """
        try:
            if self.ctx.jobs.is_cancel_requested(job_id=self.job.id):
                return "cancelled"
            if beat and not self.ctx.jobs.heartbeat(job_id=self.job.id, fence=self.fence,
                                                    lease_seconds=self.ctx.options.lease_seconds):
                return "lost"
        except StoreError as exc:
            logger.warning("job %s: job store unavailable, compile goes on: %s", self.job.id,
                           exc.detail)
        return None

    def _flush_quietly(self, now: float) -> None:
        try:
            self.logs.flush_if_due(now)
            self.progress.flush_if_due(now)
        except StoreError as exc:
            logger.warning("job %s: could not write progress: %s", self.job.id, exc.detail)

    def _take(self, stream: str, line: str) -> None:
        take_line(stream, line, self.logs, self.progress, self.child_spans)

    def _crashed_before(self) -> bool:
        """Did an earlier attempt of this job die of a signal (see :data:`CRASH_MARK`)?"""
        try:
            return any(entry.line.startswith(CRASH_MARK)
                       for entry in self.ctx.jobs.read_logs(job_id=self.job.id))
        except StoreError:
            return False

