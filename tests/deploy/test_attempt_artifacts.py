"""Artifacts per attempt: a stale attempt can never change what a job serves.

Each attempt stores its outputs under ``jobs/<id>/attempt-<fence>/`` and the fenced finish
publishes one attempt. Here two real :class:`CompileAttempt` objects of the worker race on one
job (the first lost its lease and the job was claimed again), on the local store and on a real
S3-compatible server (moto's server mode, see ``conftest.py``); the job is read back through the
API. The compile itself is not run: each attempt's output folder holds distinct bytes, which is
what makes an overwrite visible.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from kiln_client.models import JobStatus
from kiln_service import migrations
from kiln_service.config import Settings
from kiln_service.main import create_app
from kiln_service.reconcile import Reconciler
from kiln_service.stores._recovery_ops import AttemptsOfJob
from kiln_service.stores._schema import jobs
from kiln_service.stores.artifacts import (
    ArtifactStore,
    artifact_key,
    job_prefix,
    list_attempts,
    upload_key,
)
from kiln_service.stores.jobs import JobRecord, JobStore
from kiln_worker._compile_job import CompileAttempt
from kiln_worker._context import WorkerContext
from kiln_worker.config import WorkerSettings


@dataclass
class Rig:
    """The API app, its job store and artifact store, and a worker context over the same."""

    app: Any
    jobs: JobStore
    artifacts: ArtifactStore
    worker: WorkerContext
    http: httpx.AsyncClient


@pytest.fixture(params=["local", "s3"])
async def rig(request: pytest.FixtureRequest, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Rig]:
    monkeypatch.setenv("KILN_AUTH", "off")
    storage = None
    if request.param == "s3":
        request.getfixturevalue("s3_env")  # boto3's environment points at the moto server
        storage = f"s3://{request.getfixturevalue('bucket')}/kiln?addressing_style=path"
    settings = Settings(data_dir=tmp_path / "kiln", auth="off", storage_url=storage)
    migrations.upgrade(settings.resolved_database_url)
    app = create_app(settings)
    services = app.state.services
    options = WorkerSettings(work_dir=tmp_path / "work", lease_seconds=30)
    worker = WorkerContext(settings=settings, options=options, jobs=services.job_store,
                           artifacts=services.artifact_store)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://kiln.test") as http:
        yield Rig(app, services.job_store, services.artifact_store, worker, http)
    services.job_store.dispose()


def outputs(attempt: CompileAttempt, tag: str) -> dict[str, bytes]:
    """Write what a compile child leaves in the attempt's output folder; bytes unique to ``tag``."""
    files = {"compiled_model.tar.gz": f"model of {tag} ".encode() + os.urandom(2048),
             "report.json": json.dumps({"attempt": tag}).encode()}
    attempt.out_dir.mkdir(parents=True)
    for name, data in files.items():
        (attempt.out_dir / name).write_bytes(data)
    return files


def two_claims(rig: Rig) -> tuple[JobRecord, JobRecord]:
    """A job claimed once, its lease lapsed and taken back by the reconciler, claimed again."""
    job = rig.jobs.create_job(target="xla", timeout_seconds=60, input_digests={})
    rig.artifacts.put_stream(upload_key(job.id, "model"), [b"the upload"])
    first = rig.jobs.claim_job(job_id=job.id, worker_id="worker-a", lease_seconds=0)
    assert first is not None and first.fence == 1
    time.sleep(0.01)  # the zero-second lease is now in the past
    requeued, _ = rig.jobs.recover_expired_leases(max_attempts=3)
    assert [r.job_id for r in requeued] == [job.id]
    second = rig.jobs.claim_job(job_id=job.id, worker_id="worker-b", lease_seconds=30)
    assert second is not None and second.fence == 2
    return first, second


async def served(rig: Rig, job_id: str) -> dict[str, tuple[bytes, str]]:
    """Each artifact the API lists for the job: its downloaded bytes and its sha256 header."""
    listed = (await rig.http.get(f"/v1/jobs/{job_id}/artifacts")).json()
    out = {}
    for artifact in listed:
        resp = await rig.http.get(f"/v1/jobs/{job_id}/artifacts/{artifact['name']}")
        assert resp.status_code == 200, resp.text
        assert resp.headers["X-Checksum-SHA256"] == artifact["sha256"]
        out[artifact["name"]] = (resp.content, artifact["sha256"])
    return out


@pytest.mark.parametrize("stale_writes", ["before the winner publishes", "after it published"])
async def test_stale_attempt_cannot_change_what_the_job_serves(
    rig: Rig, tmp_path: Path, stale_writes: str
) -> None:
    first, second = two_claims(rig)
    stale = CompileAttempt(rig.worker, first, tmp_path / "a")
    winner = CompileAttempt(rig.worker, second, tmp_path / "b")
    stale_files, winner_files = outputs(stale, "a"), outputs(winner, "b")

    if stale_writes == "before the winner publishes":
        assert stale._store_and_finish() == "lost"
        assert winner._store_and_finish() == "succeeded"
    else:
        assert winner._store_and_finish() == "succeeded"
        assert stale._store_and_finish() == "lost"

    job = rig.jobs.get_job(job_id=first.id)
    assert job.status is JobStatus.SUCCEEDED and job.published_attempt == 2
    got = await served(rig, job.id)
    for name, data in winner_files.items():
        assert got[name] == (data, hashlib.sha256(data).hexdigest()), name
        assert data != stale_files[name]
    # The refused attempt deleted what it had stored; the upload is untouched.
    assert list_attempts(rig.artifacts, job.id) == {2}
    assert rig.artifacts.exists(upload_key(job.id, "model"))


async def test_reconciler_sweeps_what_a_killed_stale_attempt_left(rig: Rig, tmp_path: Path) -> None:
    first, second = two_claims(rig)
    winner = CompileAttempt(rig.worker, second, tmp_path / "b")
    winner_files = outputs(winner, "b")
    assert winner._store_and_finish() == "succeeded"
    # The stale attempt was killed half-way through storing: its files stay behind.
    late = b"late bytes of the stale attempt"
    rig.artifacts.put_stream(artifact_key(first.id, "compiled_model.tar.gz", attempt=1), [late])
    assert list_attempts(rig.artifacts, first.id) == {1, 2}

    reconciler = Reconciler(rig.jobs, lambda job_id, target: None, artifacts=rig.artifacts)
    assert reconciler.run_once()["attempts_swept"] == 1
    assert list_attempts(rig.artifacts, first.id) == {2}
    assert reconciler.sweep_lost_attempts() == 0  # nothing more to do
    data = winner_files["compiled_model.tar.gz"]
    assert (await served(rig, first.id))["compiled_model.tar.gz"] == (
        data, hashlib.sha256(data).hexdigest())


async def test_reconciler_keeps_the_running_attempt_and_sweeps_older_ones(rig: Rig) -> None:
    first, second = two_claims(rig)
    for attempt in (first.fence, second.fence):
        rig.artifacts.put_stream(artifact_key(first.id, "report.json", attempt=attempt), [b"{}"])
    reconciler = Reconciler(rig.jobs, lambda job_id, target: None, artifacts=rig.artifacts)
    assert reconciler.sweep_lost_attempts() == 1
    assert list_attempts(rig.artifacts, first.id) == {2}  # the running attempt keeps its files


async def test_deleting_a_job_removes_every_attempts_keys(rig: Rig, tmp_path: Path) -> None:
    first, second = two_claims(rig)
    winner = CompileAttempt(rig.worker, second, tmp_path / "b")
    outputs(winner, "b")
    assert winner._store_and_finish() == "succeeded"
    rig.artifacts.put_stream(artifact_key(first.id, "report.json", attempt=1), [b"stale"])
    assert len(rig.artifacts.list_prefix(job_prefix(first.id))) >= 5  # upload + 2 attempts

    resp = await rig.http.delete(f"/v1/jobs/{first.id}")
    assert resp.status_code == 204, resp.text
    assert rig.artifacts.list_prefix(job_prefix(first.id)) == []
    assert (await rig.http.get(f"/v1/jobs/{first.id}")).status_code == 404


async def test_jobs_published_before_attempt_keys_are_still_served(rig: Rig) -> None:
    """A job finished before ``published_attempt`` existed keeps its files at the old keys."""
    job = rig.jobs.create_job(target="xla", timeout_seconds=60, input_digests={})
    assert rig.jobs.claim_job(job_id=job.id, worker_id="old-worker") is not None
    size, sha = rig.artifacts.put_stream(f"jobs/{job.id}/report.json", [b"old layout"])
    with rig.jobs.engine.begin() as conn:  # what a finish before migration 0004 wrote
        conn.execute(jobs.update().where(jobs.c.id == job.id).values(
            status="succeeded", stage="done", published_attempt=None,
            artifacts=[{"name": "report.json", "size": size, "sha256": sha}]))
    assert (await served(rig, job.id))["report.json"] == (b"old layout", sha)
    reconciler = Reconciler(rig.jobs, lambda job_id, target: None, artifacts=rig.artifacts)
    assert reconciler.sweep_lost_attempts() == 0
    assert rig.artifacts.exists(f"jobs/{job.id}/report.json")


@pytest.mark.parametrize(("status", "fence", "published", "garbage"), [
    ("running", 3, None, {1, 2}),       # the running attempt may still publish
    ("queued", 2, None, {1, 2}),        # its last attempt lost; the next claim gets fence 3
    ("succeeded", 3, 3, {1, 2}),
    ("failed", 2, None, {1, 2}),        # lost for good (WorkerLost): nothing published
    ("cancelled", 1, 1, set()),
])
def test_which_attempts_are_garbage(status: str, fence: int, published: int | None,
                                    garbage: set[int]) -> None:
    job = AttemptsOfJob("j", status, fence, published)
    # Attempts after the snapshot (fence + 1) were claimed since: never touched.
    assert {n for n in range(1, fence + 2) if job.is_garbage(n)} == garbage
