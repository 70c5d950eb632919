"""One attempt at one compile job, as the ``kiln.compile`` task runs it.

claim (the job store decides) → adopt the compile process started ahead and its job folder
(:mod:`kiln_worker._warm`), or make a fresh folder → fetch and unpack the upload into it →
write the spec → hand it to the compile process (started now if none waited), streaming its
progress and log lines to the job store, renewing the lease, watching for cancellation and the
time limit → store the artifacts under the attempt's own keys (``jobs/<id>/attempt-<fence>/``)
→ finish the job with the attempt's fence, which publishes those keys in the same ``UPDATE``.
A stale attempt's finish is refused and it deletes what it stored. The temporary directory is
removed afterwards, whatever happened.

Here: claiming, preparing and the attempt's outline. The worker's stores and settings are
:class:`kiln_worker._context.WorkerContext`; running the compile process is
:mod:`kiln_worker._compile_run`; storing the artifacts and finishing the job,
:mod:`kiln_worker._compile_store`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from kiln_client.codes import FailureCode, FailureKind
from kiln_client.models import Failure, JobStatus, Stage
from kiln_service.logs import bind
from kiln_service.stores.artifacts import upload_key
from kiln_service.stores.jobs import JobRecord
from kiln_service.tracing import annotate, traced
from kiln_worker._compile_run import SupervisedRun
from kiln_worker._compile_store import StoringRun, retry_or_fail
from kiln_worker._context import WorkerContext
from kiln_worker._job_dirs import UnsafeOutputError, compiled_file, job_dir
from kiln_worker._job_io import LogBuffer, ProgressBuffer, child_failure
from kiln_worker._limits import CRASH_MARK, crash_failure
from kiln_worker._protocol import EXIT_FAILED, EXIT_OK, JobSpec, rewrite_workdir
from kiln_worker._sandbox import isolation
from kiln_worker._upload import UploadError, unpack_model
from kiln_worker._warm import CompileProcess, WarmSlot
from kiln_worker.config import worker_id

# retry_or_fail lives in _compile_store (finishing an attempt); it is still importable from here.
__all__ = ["CompileAttempt", "run_compile_job"]

logger = logging.getLogger(__name__)


def run_compile_job(ctx: WorkerContext, job_id: str, warm: WarmSlot | None = None
                    ) -> dict[str, Any]:
    """Claim and run one job; the body of the ``kiln.compile`` task.

    Args:
        ctx: the worker's stores and settings.
        job_id: the job from the task message.
        warm: the pool process's compile process started ahead, taken by this job if alive
            (without one, the job starts its own compile process).

    Returns:
        ``{"job_id", "status"}``: the final status, or ``skipped`` when the job was not claimable
        (already claimed, cancelled or gone: the job store is the truth, not the message).
    """
    job = ctx.jobs.claim_job(job_id=job_id, worker_id=worker_id(),
                             lease_seconds=ctx.options.lease_seconds)
    if job is None:
        return {"job_id": job_id, "status": "skipped"}
    bind(tenant=job.tenant, attempt=job.attempts)
    annotate({"kiln.tenant": job.tenant, "kiln.attempt": job.attempts, "kiln.target": job.target})
    adopted = warm.take(job_id) if warm is not None else None
    folder = adopted[0] if adopted is not None else job_dir(job_id, ctx.options.work_dir)
    with folder as tmp:
        try:
            status = CompileAttempt(ctx, job, Path(tmp),
                                    adopted[1] if adopted is not None else None).run()
        except Exception as exc:
            # Kiln's own fault (a store failed mid-job, say). Record it if the store lets us,
            # rather than leave the job running with nobody working on it.
            logger.exception("job %s: attempt crashed", job_id)
            _fail_quietly(ctx, job, exc)
            raise
    return {"job_id": job_id, "status": status}


def _fail_quietly(ctx: WorkerContext, job: JobRecord, exc: Exception) -> None:
    failure = Failure.of(FailureCode.WORKER_ERROR,
                         f"the worker failed while running the job ({type(exc).__name__}: "
                         f"{exc}); this is Kiln's fault, please retry or report it")
    try:
        retry_or_fail(ctx, job, failure)
    except Exception:
        # The job store is down too: the job keeps its lease until it lapses, and the
        # reconciler then queues it again (or fails it after the last attempt).
        logger.exception("job %s: could not record the failure either", job.id)


class _FlagsRewriteError(Exception):
    """The flags string cannot be parsed to move ``--workdir`` (a ``client_error``)."""


class CompileAttempt(SupervisedRun, StoringRun):
    """One run of a claimed job in the temporary directory ``tmp``.

    ``process`` is the compile process started ahead in ``tmp`` (``None``: start one when the
    upload is ready). Every write to the job store carries the claim's ``fence``, so a stale attempt (its lease
    lapsed and the job was handed to another worker) can neither report progress nor finish it.
    """

    def __init__(self, ctx: WorkerContext, job: JobRecord, tmp: Path,
                 process: CompileProcess | None = None) -> None:
        self.ctx, self.job, self.tmp, self.process = ctx, job, tmp, process
        self.fence = job.fence
        # What the compile sees (and may write): ``compile/``. The worker's own files (the log
        # and the workdir archive it uploads) stay beside it, out of the compile's reach.
        self.box = tmp / "compile"
        self.out_dir, self.home = self.box / "out", self.box / "home"
        self.error_file = self.box / "error.json"
        # Where the attempt's time goes, reported on the job (Job.report["worker_timings"]).
        self.timings: dict[str, float] = {}
        self._started = time.monotonic()
        self.workdir: Path | None = None
        self.isolation = isolation(ctx.settings, ctx.options)
        self.limit_failure: Failure | None = None
        self.memory_group = False
        self.peaks: dict[str, int | None] = {}
        self.logs = LogBuffer(
            lambda lines: ctx.jobs.append_logs(job_id=job.id, lines=lines),
            ctx.options.log_flush_seconds,
        )
        self.progress = ProgressBuffer(
            lambda stage, fraction, message: ctx.jobs.update_progress(
                job_id=job.id, stage=stage, progress=fraction, message=message, fence=self.fence),
            ctx.options.log_flush_seconds,
        )

    def run(self) -> str:
        """Run the attempt to its end and return the job's final status (``lost`` if stale)."""
        try:
            return self._run()
        finally:
            if self.process is not None:  # not run (the upload was bad): stop it unused
                self.process.discard()

    def _run(self) -> str:
        self.logs.add(f"[kiln] job {self.job.id} attempt {self.job.attempts} on {worker_id()}")
        try:
            spec_path = self._prepare()
        except UploadError as exc:
            return self._fail(Failure.of(FailureCode.INVALID_MODEL, str(exc)))
        except _FlagsRewriteError as exc:
            return self._fail(Failure.of(FailureCode.INVALID_FLAGS,
                                         f"cannot use the flags {self.job.flags!r}: {exc}"))
        except Exception as exc:  # the store failed us: Kiln's fault, not the model's
            logger.exception("job %s: preparing failed", self.job.id)
            return self._fail(Failure.of(FailureCode.STORAGE_ERROR,
                                         f"the worker could not fetch the upload: {exc}"),
                              retry=True)
        ended = self._supervise(spec_path)
        if isinstance(ended, str):
            return self._stopped(ended)
        if ended == EXIT_OK:
            return self._succeed()
        crash = None if self.limit_failure else crash_failure(
            ended, self.logs.tail(), crashed_before=self._crashed_before(),
            memory_group=self.memory_group)
        if crash is not None and crash.code is FailureCode.WORKER_ERROR:
            self.logs.add(f"{CRASH_MARK} {-ended}")
        failure = self.limit_failure or crash or child_failure(
            ended, self._error_file(), self.logs.tail(), exit_failed=EXIT_FAILED)
        return self._fail(failure, retry=failure.kind is FailureKind.SYSTEM_ERROR and ended < 0)

    def _error_file(self) -> Path:
        """The compile's error file, unless it is a link the compile planted (then: none)."""
        try:
            return compiled_file(self.box, self.error_file)
        except (UnsafeOutputError, OSError):
            return self.box / "no-error-file"

    def _stopped(self, reason: str) -> str:
        """Finish a job whose compile was stopped: ``cancelled``, ``timeout`` or ``lost``."""
        if reason == "lost":
            logger.warning("job %s: attempt lost its lease; leaving the job alone", self.job.id)
            return "lost"
        if reason == "cancelled":
            self.logs.add("[kiln] cancelled at the owner's request; compile process group killed")
            return self._finish(JobStatus.CANCELLED, None)
        limit, most = self.job.timeout_seconds, self.ctx.settings.max_timeout_seconds
        return self._fail(Failure.of(
            FailureCode.TIME_OUT,
            f"the compile ran past its time limit of {limit} s and was stopped; "
            f"resubmit with a larger timeout_seconds (this server allows up to {most} s)",
        ))

    # -- preparing ---------------------------------------------------------------------------

    @traced("kiln.fetch_upload")
    def _prepare(self) -> Path:
        self.progress.set(Stage.PREPARING.value, 0.01, "fetching the upload", force=True)
        for path in (self.out_dir, self.home, self.box / "upload"):
            path.mkdir(parents=True, exist_ok=True)  # home/ exists in an adopted folder
        archive = self.box / "upload" / "model"
        self.ctx.artifacts.get_to_file(upload_key(self.job.id, "model"), archive)
        model_dir = unpack_model(archive, self.box / "model")
        archive.unlink()
        npz: str | None = None
        npz_key = upload_key(self.job.id, "example_inputs.npz")
        if self.ctx.artifacts.exists(npz_key):
            npz = str(self.box / "upload" / "example_inputs.npz")
            self.ctx.artifacts.get_to_file(npz_key, npz)
        try:
            flags, wants_workdir = rewrite_workdir(self.job.flags, str(self.box / "workdir"))
        except ValueError as exc:
            raise _FlagsRewriteError(str(exc)) from exc
        if wants_workdir:
            self.workdir = self.box / "workdir"
            self.logs.add("[kiln] --workdir is kept on the worker and returned as workdir.tar.gz")
        spec = JobSpec(
            job_id=self.job.id, model_dir=str(model_dir), output_dir=str(self.out_dir),
            error_file=str(self.error_file), target=self.job.target,
            signature=self.job.signature, flags=flags, example_inputs=npz,
            input_shapes=self.job.input_shapes,
            placement=self.job.placement.model_dump() if self.job.placement else None,
            upload_digests=dict(self.job.input_digests),
        )
        spec_path = self.box / "spec.json"
        spec.write(spec_path)
        return spec_path
