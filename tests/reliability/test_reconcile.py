"""The reconciler and the store's retry operations, on a real SQLite job store.

Leases are made to lapse by writing ``lease_expires_at`` in the past (the same column the
reconciler reads), not by waiting; the fault tests (``test_faults.py``) do it with real kills.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from kiln_client.models import Failure, FailureKind, JobStatus
from kiln_service import migrations
from kiln_service.reconcile import Reconciler, ReconcileSettings
from kiln_service.stores._schema import jobs, utcnow
from kiln_service.stores.jobs import JobStore

BOOM = Failure(kind=FailureKind.SYSTEM_ERROR, code="StorageError", message="disk full")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    url = f"sqlite:///{tmp_path / 'kiln.db'}"
    migrations.upgrade(url)
    job_store = JobStore(url)
    yield job_store
    job_store.dispose()


def _new(store: JobStore) -> str:
    return store.create_job(target="xla", timeout_seconds=60, input_digests={"model": "a" * 64}).id


def _age(store: JobStore, job_id: str, *, lease: float | None = None, updated: float | None = None
         ) -> None:
    """Move a job's lease expiry / last update ``seconds`` into the past."""
    values: dict[str, object] = {}
    if lease is not None:
        values["lease_expires_at"] = utcnow() - timedelta(seconds=lease)
    if updated is not None:
        values["updated_at"] = utcnow() - timedelta(seconds=updated)
    with store._tx() as conn:
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(**values))


class Sent:
    """Records what the reconciler re-sends (the broker is not what these tests are about)."""

    def __init__(self) -> None:
        self.jobs: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, job_id: str, target: str) -> None:
        with self.lock:
            self.jobs.append((job_id, target))


def test_retry_requeues_until_the_last_attempt_then_fails(store: JobStore) -> None:
    job_id = _new(store)
    outcomes = []
    for _ in range(3):
        claimed = store.claim_job(job_id=job_id, worker_id="w")
        assert claimed is not None
        outcomes.append(store.retry_job(job_id=job_id, fence=claimed.fence, failure=BOOM))
    assert outcomes == ["queued", "queued", "failed"]
    job = store.get_job(job_id=job_id)
    assert job.status is JobStatus.FAILED and job.attempts == 3
    assert job.failure is not None and job.failure.kind is FailureKind.SYSTEM_ERROR


def test_a_stale_attempt_cannot_retry_or_finish(store: JobStore) -> None:
    job_id = _new(store)
    first = store.claim_job(job_id=job_id, worker_id="old")
    assert first is not None
    _age(store, job_id, lease=1)
    recovered, _ = store.recover_expired_leases()
    assert [r.job_id for r in recovered] == [job_id]
    second = store.claim_job(job_id=job_id, worker_id="new")
    assert second is not None and second.fence == first.fence + 1
    assert store.retry_job(job_id=job_id, fence=first.fence, failure=BOOM) is None
    assert store.finish_job(job_id=job_id, status=JobStatus.SUCCEEDED, fence=first.fence) is None
    assert store.finish_job(job_id=job_id, status=JobStatus.SUCCEEDED, fence=second.fence)


def test_reconciler_recovers_lapsed_leases_and_gives_up_after_max_attempts(store: JobStore) -> None:
    job_id = _new(store)
    sent = Sent()
    reconciler = Reconciler(store, sent, ReconcileSettings(max_attempts=2))
    for attempt in (1, 2):
        assert store.claim_job(job_id=job_id, worker_id=f"w{attempt}") is not None
        assert reconciler.run_once()["recovered"] == 0  # lease still live: left alone
        _age(store, job_id, lease=1)
        reconciler.run_once()
    assert sent.jobs == [(job_id, "xla")]
    job = store.get_job(job_id=job_id)
    assert job.status is JobStatus.FAILED and job.attempts == 2
    assert job.failure is not None and job.failure.code == "WorkerLost"
    assert "w2" in job.failure.message and job.failure.kind is FailureKind.SYSTEM_ERROR


def test_lapsed_job_with_cancel_requested_is_cancelled(store: JobStore) -> None:
    job_id = _new(store)
    assert store.claim_job(job_id=job_id, worker_id="w") is not None
    store.request_cancel(job_id=job_id)
    _age(store, job_id, lease=1)
    requeued, ended = store.recover_expired_leases()
    assert requeued == [] and ended == [job_id]
    assert store.get_job(job_id=job_id).status is JobStatus.CANCELLED


def test_stale_queued_jobs_are_resent_once_among_many_reconcilers(store: JobStore) -> None:
    old, fresh = _new(store), _new(store)
    _age(store, old, updated=120)
    sent = Sent()
    reconcilers = [Reconciler(store, sent, ReconcileSettings(requeue_after_seconds=30))
                   for _ in range(6)]
    barrier = threading.Barrier(len(reconcilers))

    def one_pass(reconciler: Reconciler) -> int:
        barrier.wait()
        return reconciler.run_once()["requeued"]

    with ThreadPoolExecutor(len(reconcilers)) as pool:
        counts = list(pool.map(one_pass, reconcilers))
    assert sum(counts) == 1 and sent.jobs == [(old, "xla")]
    assert fresh not in [job for job, _ in sent.jobs]
    # re-sending bumped updated_at: the next pass leaves it alone
    assert reconcilers[0].run_once()["requeued"] == 0


def test_a_failing_broker_leaves_the_job_queued_for_the_next_pass(store: JobStore) -> None:
    job_id = _new(store)
    _age(store, job_id, updated=120)

    def down(job_id: str, target: str) -> None:
        raise ConnectionError("broker down")

    counts = Reconciler(store, down, ReconcileSettings(requeue_after_seconds=30)).run_once()
    assert counts["send_failed"] == 1
    assert store.get_job(job_id=job_id).status is JobStatus.QUEUED
