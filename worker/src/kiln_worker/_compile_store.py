"""Finishing one attempt: store its artifacts, export them, and finish the job with its fence.

A mixin of :class:`kiln_worker._compile_job.CompileAttempt`, as :mod:`kiln_worker._compile_run`
is for running the compile. The artifacts go under the attempt's own keys
(``jobs/<id>/attempt-<fence>/``); the finish publishes them in the same ``UPDATE`` that checks the
fence, so a stale attempt's finish is refused and it deletes what it stored. A system error is
retried (the job queued again) until the job has had its attempts.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from kiln_client.codes import FailureCode
from kiln_client.models import Artifact, Failure, JobStatus, Stage
from kiln_service import cache
from kiln_service.errors import StoreError
from kiln_service.exports import run_exports
from kiln_service.stores._pipeline import record_exports
from kiln_service.stores.artifacts import artifact_key, attempt_prefix
from kiln_service.stores.jobs import JobRecord
from kiln_service.tracing import annotate, traced
from kiln_worker._advertise import toolchains
from kiln_worker._context import WorkerContext
from kiln_worker._job_dirs import UnsafeOutputError, compiled_file
from kiln_worker._job_io import LogBuffer, ProgressBuffer, summarize_report
from kiln_worker._upload import pack_dir

__all__ = ["StoringRun", "retry_or_fail"]

logger = logging.getLogger(__name__)


def retry_or_fail(ctx: WorkerContext, job: JobRecord, failure: Failure) -> str:
    """Queue the job again after a system error, or fail it once it had its attempts.

    Returns:
        ``retrying``, ``failed``, or ``lost`` (the attempt was stale).

    Raises:
        StoreError: The job store failed.
    """
    outcome = ctx.jobs.retry_job(job_id=job.id, fence=job.fence, failure=failure,
                                 max_attempts=ctx.options.max_attempts)
    if outcome == "queued":
        if ctx.enqueue is not None:
            try:
                ctx.enqueue(job.id, job.target)
            except Exception as exc:  # the reconciler re-sends a queued job nobody touched
                logger.warning("job %s: could not re-send it (%s); the reconciler will", job.id, exc)
        return "retrying"
    return "failed" if outcome == "failed" else "lost"


class StoringRun:
    """The finishing part of an attempt (attributes set by ``CompileAttempt.__init__``)."""

    ctx: WorkerContext
    job: JobRecord
    tmp: Path
    box: Path
    out_dir: Path
    fence: int
    workdir: Path | None
    logs: LogBuffer
    progress: ProgressBuffer
    timings: dict[str, float]
    peaks: dict[str, int | None]
    _started: float

    def _succeed(self) -> str:
        # Fence check before writing: a stale attempt must not overwrite the winner's files
        # (the finish below checks the fence again, in the same UPDATE that publishes).
        if not self.ctx.jobs.heartbeat(job_id=self.job.id, fence=self.fence,
                                       lease_seconds=self.ctx.options.lease_seconds):
            logger.warning("job %s: attempt lost its lease before storing", self.job.id)
            return "lost"
        self.progress.set(Stage.STORING.value, 0.97, "storing artifacts", force=True)
        try:
            return self._store_and_finish()
        except UnsafeOutputError as exc:
            return self._fail(Failure.of(FailureCode.MODEL_ERROR, str(exc)))
        except (OSError, StoreError) as exc:
            self._discard_outputs()  # what the failed store left of this attempt
            detail = getattr(exc, "detail", None) or str(exc)
            return self._fail(Failure.of(
                FailureCode.STORAGE_ERROR,
                f"the compile succeeded but its artifacts could not be stored ({detail}); "
                "nothing was published. This is Kiln's fault (is the artifact store full?)"),
                retry=True, store_artifacts=False)

    def _store_and_finish(self) -> str:
        report_path = self.out_dir / "report.json"
        report = json.loads(compiled_file(self.box, report_path).read_text())
        artifacts = [
            self._put("compiled_model.tar.gz",
                      compiled_file(self.box, self.out_dir / "compiled_model.tar.gz"),
                      "application/gzip"),
            self._put("report.json", report_path, "application/json"),
        ]
        artifacts += self._put_workdir()
        artifacts.append(self._put_log())
        summary = summarize_report(report)
        self.timings["store_seconds"] = time.monotonic() - self._started - sum(self.timings.values())
        if self.job.started_at is not None:
            self.timings["queue_wait_seconds"] = (self.job.started_at - self.job.created_at
                                                  ).total_seconds()
        summary["worker_timings"] = {k: round(v, 3) for k, v in self.timings.items()}
        summary["compile_peaks"] = self.peaks
        self._export(summary)
        return self._finish(JobStatus.SUCCEEDED, None, artifacts, summary)

    def _export(self, summary: dict[str, Any]) -> None:
        """Write ``output_location`` and register in MLflow when asked (failures only noted)."""
        pipeline = {"model_source": self.job.model_source, "output_location": self.job.output_location,
                    "mlflow_register": self.job.mlflow_register}
        if not (self.job.output_location or self.job.mlflow_register):
            return
        self.progress.set(Stage.STORING.value, 0.98, "exporting the compiled model", force=True)
        files = {name: compiled_file(self.box, self.out_dir / name)
                 for name in ("compiled_model.tar.gz", "report.json")}
        files["compile.log"] = self.tmp / "compile.log"
        if (self.tmp / "workdir.tar.gz").is_file():
            files["workdir.tar.gz"] = self.tmp / "workdir.tar.gz"
        exports = run_exports(self.ctx.settings, job_id=self.job.id, pipeline=pipeline,
                              files=files, summary=summary, log=self.logs.add)
        self.logs.flush()
        record_exports(self.ctx.jobs.engine, job_id=self.job.id, exports=exports)

    def _fail(self, failure: Failure, *, retry: bool = False, store_artifacts: bool = True) -> str:
        self.logs.add(f"[kiln] failed: {failure.kind.value} {failure.code}: {failure.message}")
        if retry and self.job.attempts < self.ctx.options.max_attempts:
            self.logs.add(f"[kiln] attempt {self.job.attempts} of {self.ctx.options.max_attempts}"
                          " failed for a system reason; the job is queued again")
            self.logs.flush()
            return retry_or_fail(self.ctx, self.job, failure)
        artifacts: list[Artifact] = []
        if store_artifacts:
            try:
                artifacts = [*self._put_workdir(), self._put_log()]
            except Exception:  # the failure matters more than its leftovers
                logger.exception("job %s: could not store the artifacts of a failed job",
                                 self.job.id)
        return self._finish(JobStatus.FAILED, failure, artifacts)

    def _finish(self, status: JobStatus, failure: Failure | None,
                artifacts: list[Artifact] | None = None,
                report: dict[str, Any] | None = None) -> str:
        if artifacts is None:
            artifacts = [self._put_log()]
        if failure is not None:
            annotate({"kiln.failure_code": getattr(failure.code, "value", failure.code)})
        done = self.ctx.jobs.finish_job(job_id=self.job.id, status=status, failure=failure,
                                        artifacts=artifacts, report=report, fence=self.fence)
        if done is None:
            self._discard_outputs()
            return "lost"
        cache.record_outcome(self.ctx.jobs, self.ctx.artifacts, job=done,
                             toolchain=toolchains([done.target])[done.target],
                             max_bytes=self.ctx.settings.cache_max_bytes)
        return status.value

    def _discard_outputs(self) -> None:
        """Delete what this attempt stored: another attempt owns the job now, or it ended."""
        try:
            self.ctx.artifacts.delete_prefix(attempt_prefix(self.job.id, self.fence))
        except Exception as exc:  # the reconciler sweeps what is left
            logger.warning("job %s: could not delete the outputs of stale attempt %s: %s",
                           self.job.id, self.fence, exc)

    def _put_workdir(self) -> list[Artifact]:
        if self.workdir is None or self.workdir.is_symlink() or not self.workdir.is_dir():
            return []
        archive = self.tmp / "workdir.tar.gz"
        files = pack_dir(self.workdir, archive, "workdir")
        self.logs.add(f"[kiln] workdir: {files} files")
        return [self._put("workdir.tar.gz", archive, "application/gzip")]

    def _put_log(self) -> Artifact:
        self.logs.flush()
        path = self.tmp / "compile.log"
        lines = self.ctx.jobs.read_logs(job_id=self.job.id)
        path.write_text("".join(f"{entry.line}\n" for entry in lines))
        return self._put("compile.log", path, "text/plain; charset=utf-8")

    @traced("kiln.upload_artifact")
    def _put(self, name: str, path: Path, content_type: str) -> Artifact:
        annotate({"kiln.artifact": name})
        key = artifact_key(self.job.id, name, attempt=self.fence)
        size, sha256 = self.ctx.artifacts.put_file(key, path)
        return Artifact(name=name, size=size, sha256=sha256, content_type=content_type)
