"""One compile job end to end without Celery: real SQLite job store, local artifact store,
real compile child. (With Celery, the API and PostgreSQL/Redis: tests/integration.)"""

from __future__ import annotations

import json
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from worker_helpers import runner_processes, worker_context

from kiln_client.models import FailureKind, JobStatus
from kiln_service.stores.artifacts import artifact_key, upload_key
from kiln_worker._compile_job import run_compile_job
from kiln_worker._context import WorkerContext


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[WorkerContext]:
    with worker_context(tmp_path) as context:
        yield context


def submit(ctx: WorkerContext, model_tar: Path, npz: Path | None = None, **fields: Any) -> str:
    """Store the uploads and create the job, as the API does."""
    job_id = f"job{time.monotonic_ns()}"
    digests = {"model": ctx.artifacts.put_file(upload_key(job_id, "model"), model_tar)[1]}
    if npz is not None:
        digests["example_inputs"] = ctx.artifacts.put_file(
            upload_key(job_id, "example_inputs.npz"), npz)[1]
    fields.setdefault("timeout_seconds", 300)
    ctx.jobs.create_job(job_id=job_id, target="xla", input_digests=digests, **fields)
    return job_id


def test_success_stores_artifacts_and_the_workdir(ctx: WorkerContext, zoo: Path) -> None:
    job_id = submit(ctx, zoo / "mlp" / "model.tar.gz", zoo / "mlp" / "example_inputs.npz",
                    flags="--workdir /tmp/not-on-the-worker")
    assert run_compile_job(ctx, job_id) == {"job_id": job_id, "status": "succeeded"}
    job = ctx.jobs.get_job(job_id=job_id)
    assert job.status is JobStatus.SUCCEEDED and job.progress == 1.0
    names = {a.name for a in job.artifacts}
    assert names == {"compiled_model.tar.gz", "report.json", "compile.log", "workdir.tar.gz"}
    attempt = job.published_attempt
    assert attempt == job.fence == 1  # the one attempt's own keys are the published ones
    for artifact in job.artifacts:
        assert ctx.artifacts.size(artifact_key(job_id, artifact.name, attempt)) == artifact.size
    report_path = ctx.artifacts.path_for(artifact_key(job_id, "report.json", attempt))
    assert json.loads(report_path.read_text())["numerical_check"]["within_tolerance"] is True
    assert job.report is not None and job.report["numerical_check"]["within_tolerance"] is True
    with tarfile.open(ctx.artifacts.path_for(artifact_key(job_id, "workdir.tar.gz", attempt))) as tar:
        assert any(m.isfile() for m in tar.getmembers())
    assert not Path("/tmp/not-on-the-worker").exists()
    log = ctx.artifacts.path_for(artifact_key(job_id, "compile.log", attempt)).read_text()
    assert "[tracing]" in log and "compile process" in log
    assert list((ctx.options.work_dir or Path("/nonexistent")).iterdir()) == []  # temp dir removed


def test_timeout_kills_the_compile_and_says_how_to_raise_it(ctx: WorkerContext, zoo: Path) -> None:
    job_id = submit(ctx, zoo / "slow" / "model.tar.gz", zoo / "slow" / "example_inputs.npz",
                    timeout_seconds=4)
    assert run_compile_job(ctx, job_id)["status"] == "failed"
    job = ctx.jobs.get_job(job_id=job_id)
    assert job.failure is not None
    assert (job.failure.kind, job.failure.code) == (FailureKind.CLIENT_ERROR, "TimeOut")
    assert "4 s" in job.failure.message and "timeout_seconds" in job.failure.message
    assert runner_processes(job_id) == []
    assert "compile.log" in {a.name for a in job.artifacts}


def test_cancel_kills_the_running_compile(ctx: WorkerContext, zoo: Path) -> None:
    job_id = submit(ctx, zoo / "slow" / "model.tar.gz", zoo / "slow" / "example_inputs.npz")
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(run_compile_job(ctx, job_id)))
    thread.start()
    deadline = time.monotonic() + 120
    while not runner_processes(job_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    pids = runner_processes(job_id)
    assert pids, "the compile child never started"
    # Wait until it is really computing (past the imports) before cancelling.
    while ctx.jobs.get_job(job_id=job_id).stage.value != "loading" and time.monotonic() < deadline:
        time.sleep(0.1)
    ctx.jobs.request_cancel(job_id=job_id)
    thread.join(timeout=60)
    assert result == {"job_id": job_id, "status": "cancelled"}
    assert ctx.jobs.get_job(job_id=job_id).status is JobStatus.CANCELLED
    assert runner_processes(job_id) == []
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


def test_a_job_no_longer_queued_is_skipped(ctx: WorkerContext, zoo: Path) -> None:
    job_id = submit(ctx, zoo / "mlp" / "model.tar.gz")
    ctx.jobs.request_cancel(job_id=job_id)
    assert run_compile_job(ctx, job_id) == {"job_id": job_id, "status": "skipped"}
    assert run_compile_job(ctx, "no-such-job")["status"] == "skipped"


def test_a_broken_upload_fails_as_a_client_error(ctx: WorkerContext, tmp_path: Path) -> None:
    (tmp_path / "junk.tgz").write_bytes(b"definitely not an archive")
    job_id = submit(ctx, tmp_path / "junk.tgz")
    assert run_compile_job(ctx, job_id)["status"] == "failed"
    failure = ctx.jobs.get_job(job_id=job_id).failure
    assert failure is not None and failure.code == "InvalidModel"
    assert failure.kind is FailureKind.CLIENT_ERROR


def test_the_tracers_rejection_reaches_the_job(ctx: WorkerContext, zoo: Path) -> None:
    job_id = submit(ctx, zoo / "table_writer" / "model.tar.gz")
    assert run_compile_job(ctx, job_id)["status"] == "failed"
    job = ctx.jobs.get_job(job_id=job_id)
    assert job.failure is not None
    assert (job.failure.kind, job.failure.code) == (FailureKind.CLIENT_ERROR, "UnsupportedModel")
    logs = [entry.line for entry in ctx.jobs.read_logs(job_id=job_id)]
    assert any("UnsupportedModel" in line for line in logs)


def test_heartbeats_renew_the_lease_while_the_compile_runs(ctx: WorkerContext, zoo: Path) -> None:
    ctx.options = ctx.options.model_copy(update={"lease_seconds": 6})
    job_id = submit(ctx, zoo / "slow" / "model.tar.gz", zoo / "slow" / "example_inputs.npz",
                    timeout_seconds=14)
    thread = threading.Thread(target=run_compile_job, args=(ctx, job_id))
    thread.start()
    leases = set()
    while thread.is_alive():
        job = ctx.jobs.get_job(job_id=job_id)
        if job.lease_expires_at is not None:
            leases.add(job.lease_expires_at)
        time.sleep(0.5)
    thread.join()
    # Claimed with a 6 s lease, the attempt ran 14 s: only heartbeats kept renewing it.
    assert len(leases) >= 3
    assert ctx.jobs.get_job(job_id=job_id).failure.code == "TimeOut"


def test_a_fenced_off_attempt_stops_and_publishes_nothing(ctx: WorkerContext, zoo: Path) -> None:
    from sqlalchemy import update

    from kiln_service.stores._schema import jobs

    ctx.options = ctx.options.model_copy(update={"lease_seconds": 6})
    job_id = submit(ctx, zoo / "slow" / "model.tar.gz", zoo / "slow" / "example_inputs.npz")
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(run_compile_job(ctx, job_id)))
    thread.start()
    deadline = time.monotonic() + 120
    while not runner_processes(job_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    # Another attempt takes the job over (as lease recovery would): its fence moves on.
    with ctx.jobs.engine.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(fence=jobs.c.fence + 1))
    thread.join(timeout=60)
    assert result == {"job_id": job_id, "status": "lost"}
    job = ctx.jobs.get_job(job_id=job_id)
    assert job.status is JobStatus.RUNNING and job.artifacts == []  # left to the new attempt
    assert runner_processes(job_id) == []


@pytest.mark.parametrize("flags", ["--workdir", "--workdir 'unbalanced"])
def test_flags_the_worker_cannot_use_fail_as_client_errors(
    ctx: WorkerContext, zoo: Path, flags: str
) -> None:
    job_id = submit(ctx, zoo / "mlp" / "model.tar.gz", flags=flags)
    assert run_compile_job(ctx, job_id)["status"] == "failed"
    failure = ctx.jobs.get_job(job_id=job_id).failure
    assert failure is not None
    assert (failure.kind, failure.code) == (FailureKind.CLIENT_ERROR, "InvalidFlags")
    assert flags in failure.message
