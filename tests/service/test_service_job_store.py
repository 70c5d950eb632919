"""The job store on SQLite and PostgreSQL: lifecycle, atomic claim, logs, fencing, listing."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from kiln_client.models import Artifact, Failure, FailureKind, JobStatus, PlacementSpec, Stage
from kiln_service.errors import BadRequestError, JobNotFoundError, JobStateError
from kiln_service.stores.jobs import JobStore


def _new(store: JobStore, **kw: object) -> str:
    args: dict[str, object] = {"target": "xla", "timeout_seconds": 60, "input_digests": {"model": "ab" * 32}}
    args.update(kw)
    return store.create_job(**args).id  # type: ignore[arg-type]


def test_create_and_get_round_trips_every_field(store: JobStore) -> None:
    placement = PlacementSpec(exclude_ops=["Softmax"], include_names=["dense*"])
    job = store.create_job(
        target="inf1", timeout_seconds=120, input_digests={"model": "1" * 64, "example_inputs": "2" * 64},
        name="resnet", labels={"team": "vision"}, flags="--dynamic-batch-size", signature="sig",
        placement=placement, input_shapes={"x": [1, 3]}, tenant="acme",
    )
    got = store.get_job(job_id=job.id, tenant="acme")
    assert got.status is JobStatus.QUEUED and got.stage is Stage.QUEUED
    assert (got.target, got.name, got.labels, got.flags) == ("inf1", "resnet", {"team": "vision"}, "--dynamic-batch-size")
    assert got.placement == placement and got.input_shapes == {"x": [1, 3]}
    assert got.input_digests["example_inputs"] == "2" * 64 and got.timeout_seconds == 120
    assert got.created_at.tzinfo is not None and got.attempts == 0
    public = got.to_public().model_dump()
    assert "tenant" not in public and "fence" not in public


def test_other_tenant_sees_not_found(store: JobStore) -> None:
    job_id = _new(store, tenant="a")
    with pytest.raises(JobNotFoundError):
        store.get_job(job_id=job_id, tenant="b")
    with pytest.raises(JobNotFoundError):
        store.get_job(job_id="0" * 32)


def test_claim_is_atomic_under_concurrency(store: JobStore) -> None:
    job_id = _new(store)
    barrier = threading.Barrier(8)

    def claim(i: int) -> bool:
        barrier.wait()
        return store.claim_job(job_id=job_id, worker_id=f"w{i}") is not None

    with ThreadPoolExecutor(8) as pool:
        wins = list(pool.map(claim, range(8)))
    assert wins.count(True) == 1
    job = store.get_job(job_id=job_id)
    assert job.status is JobStatus.RUNNING and job.attempts == 1 and job.fence == 1
    assert job.worker_id == f"w{wins.index(True)}" and job.started_at is not None


def test_log_sequence_numbers_are_unique_and_contiguous(store: JobStore) -> None:
    job_id = _new(store)

    def write(i: int) -> None:
        for j in range(10):
            store.append_logs(job_id=job_id, lines=[f"w{i} l{j} a", f"w{i} l{j} b"])

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, range(4)))
    lines = store.read_logs(job_id=job_id)
    assert [ln.seq for ln in lines] == list(range(1, 81))
    assert len({ln.line for ln in lines}) == 80
    assert [ln.seq for ln in store.read_logs(job_id=job_id, after_seq=78)] == [79, 80]
    assert store.append_logs(job_id="0" * 32, lines=["x"]) == 0


def test_progress_and_finish_respect_the_fence(store: JobStore) -> None:
    job_id = _new(store)
    claimed = store.claim_job(job_id=job_id, worker_id="w")
    assert claimed is not None
    assert store.update_progress(job_id=job_id, stage=Stage.COMPILING, progress=0.5,
                                 message="compiling subgraph 1 of 2", fence=claimed.fence)
    assert not store.update_progress(job_id=job_id, stage="tracing", progress=0.1, fence=claimed.fence + 1)
    job = store.get_job(job_id=job_id)
    assert (job.stage, job.progress, job.stage_message) == (Stage.COMPILING, 0.5, "compiling subgraph 1 of 2")
    assert store.heartbeat(job_id=job_id, fence=claimed.fence)
    assert store.finish_job(job_id=job_id, status="succeeded", fence=claimed.fence + 1) is None
    art = Artifact(name="report.json", size=3, sha256="c" * 64, content_type="application/json")
    done = store.finish_job(job_id=job_id, status=JobStatus.SUCCEEDED, artifacts=[art],
                            report={"on_neuron_ratio": 1.0}, fence=claimed.fence)
    assert done is not None and done.status is JobStatus.SUCCEEDED and done.progress == 1.0
    assert done.artifacts == [art] and done.report == {"on_neuron_ratio": 1.0}
    assert done.finished_at is not None and done.stage is Stage.DONE
    assert store.finish_job(job_id=job_id, status="failed",
                            failure=Failure(kind=FailureKind.SYSTEM_ERROR, code="WorkerError",
                                            message="m")) is None
    assert not store.heartbeat(job_id=job_id, fence=claimed.fence)


def test_finish_rejects_bad_arguments(store: JobStore) -> None:
    job_id = _new(store)
    with pytest.raises(ValueError, match="terminal"):
        store.finish_job(job_id=job_id, status="running")
    with pytest.raises(ValueError, match="failure"):
        store.finish_job(job_id=job_id, status="failed")


def test_cancel_queued_running_and_finished(store: JobStore) -> None:
    queued = _new(store)
    job = store.request_cancel(job_id=queued)
    assert job.status is JobStatus.CANCELLED and job.finished_at is not None
    assert store.claim_job(job_id=queued, worker_id="w") is None
    with pytest.raises(JobStateError):
        store.request_cancel(job_id=queued)

    running = _new(store)
    assert not store.is_cancel_requested(job_id=running)
    store.claim_job(job_id=running, worker_id="w")
    job = store.request_cancel(job_id=running)
    assert job.status is JobStatus.RUNNING and job.cancel_requested
    assert store.is_cancel_requested(job_id=running)
    assert store.is_cancel_requested(job_id="0" * 32)  # a deleted job must stop too


def test_delete_only_finished_jobs(store: JobStore) -> None:
    job_id = _new(store)
    store.append_logs(job_id=job_id, lines=["hello"])
    with pytest.raises(JobStateError):
        store.delete_job(job_id=job_id)
    store.request_cancel(job_id=job_id)
    store.delete_job(job_id=job_id)
    with pytest.raises(JobNotFoundError):
        store.get_job(job_id=job_id)
    assert store.read_logs(job_id=job_id) == []
    other = _new(store)
    store.delete_job(job_id=other, only_finished=False)
    with pytest.raises(JobNotFoundError):
        store.get_job(job_id=other)


def test_list_newest_first_with_filters_and_cursor(store: JobStore) -> None:
    ids = [_new(store, name=f"job{i}", target="xla" if i % 2 else "inf1",
                labels={"team": "a" if i < 3 else "b", "n": str(i)}) for i in range(7)]
    assert [j.id for j in store.list_jobs().items] == ids[::-1]
    seen, cursor = [], None
    while True:
        page = store.list_jobs(limit=3, cursor=cursor)
        seen += [j.id for j in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == ids[::-1]
    assert [j.id for j in store.list_jobs(target="xla").items] == [ids[5], ids[3], ids[1]]
    assert [j.id for j in store.list_jobs(labels={"team": "a", "n": "1"}).items] == [ids[1]]
    assert [j.id for j in store.list_jobs(name="job4").items] == [ids[4]]
    store.request_cancel(job_id=ids[0])
    assert [j.id for j in store.list_jobs(status=["cancelled"]).items] == [ids[0]]
    assert store.list_jobs(tenant="nobody").items == []
    assert store.count_by_status() == {"queued": 6, "cancelled": 1}
    with pytest.raises(BadRequestError):
        store.list_jobs(cursor="not-a-cursor")
