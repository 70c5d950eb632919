"""The SDK against a real running Kiln service (``kiln-service up``: API + worker, real TF)."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
from client_service import RunningService
from dropping_proxy import DroppingProxy
from model_factory import example_input, keras_model, run_saved_model, save_lookup_model, save_model

import kiln_client

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(tmp_path_factory.mktemp("models") / "dense", seed=1)


@pytest.fixture
def client(kiln_service: RunningService) -> kiln_client.Client:
    with kiln_client.Client(kiln_service.url, poll_interval=0.3) as c:
        yield c  # type: ignore[misc]


def _label() -> dict[str, str]:
    return {"run": uuid.uuid4().hex[:12]}


def test_sync_compile_round_trip(client: kiln_client.Client, saved_model: Path, tmp_path: Path) -> None:
    x = example_input(4)
    job = client.compile(saved_model, example_inputs=x, flags="--dynamic-batch-size",
                         name="sync-round-trip", labels=_label(), progress=False)
    assert job.status is kiln_client.JobStatus.SUCCEEDED
    assert {a.name for a in job.artifacts} >= {"compiled_model.tar.gz", "report.json", "compile.log"}
    compiled = job.download(tmp_path / "compiled")
    np.testing.assert_allclose(run_saved_model(compiled, x), run_saved_model(saved_model, x),
                               rtol=1e-4, atol=1e-5)
    report = job.download_artifact("report.json", tmp_path)
    assert b"ops_total" in report.read_bytes()


async def test_async_compile_round_trip(kiln_service: RunningService, saved_model: Path,
                                        tmp_path: Path) -> None:
    x = example_input(2)
    async with kiln_client.AsyncClient(kiln_service.url, poll_interval=0.3) as client:
        job = await client.compile(saved_model, example_inputs={"x": x}, labels=_label(), progress=False)
        assert isinstance(job, kiln_client.AsyncJob) and job.status is kiln_client.JobStatus.SUCCEEDED
        again = await client.jobs.get(job.id)
        assert again.input_digests == job.input_digests and "model" in again.input_digests
        compiled = await job.download(tmp_path / "compiled")
        streamed = [line async for line in job.logs(follow=True)]
        assert streamed and streamed == [line async for line in job.logs(follow=False)]
    np.testing.assert_allclose(run_saved_model(compiled, x), run_saved_model(saved_model, x),
                               rtol=1e-4, atol=1e-5)


def test_keras_object_in_compiled_model_out(client: kiln_client.Client, tmp_path: Path) -> None:
    model = keras_model(seed=7)
    x = example_input(3)
    job = client.compile(model, example_inputs=x, labels=_label(), progress=False)
    compiled = job.download(tmp_path / "compiled")
    np.testing.assert_allclose(run_saved_model(compiled, x), model(x).numpy(), rtol=1e-4, atol=1e-5)


def test_listing_across_pages(client: kiln_client.Client, saved_model: Path) -> None:
    label = _label()
    submitted = [client.compile(saved_model, labels=label, name=f"page-{i}", wait=False, progress=False)
                 for i in range(3)]
    listed = list(client.jobs.list(label=label, page_size=2))
    assert [j.id for j in listed] == [j.id for j in reversed(submitted)]  # newest first
    assert next(iter(client.jobs.list(label=label, name="page-1"))).id == submitted[1].id
    for job in submitted:
        job.wait()
    succeeded = list(client.jobs.list(label=label, status="succeeded", page_size=1))
    assert len(succeeded) == 3


def test_logs_stream_live_until_the_job_ends(client: kiln_client.Client, saved_model: Path) -> None:
    job = client.compile(saved_model, labels=_label(), wait=False, progress=False)
    streamed = list(job.logs(follow=True))
    assert job.refresh().done
    assert streamed, "no log lines were streamed"
    assert streamed == list(job.logs(follow=False))


def test_cancel(client: kiln_client.Client, saved_model: Path) -> None:
    job = client.compile(saved_model, labels=_label(), wait=False, progress=False)
    job.cancel()
    with pytest.raises(kiln_client.JobCancelled):
        job.wait()
    assert job.status is kiln_client.JobStatus.CANCELLED
    with pytest.raises(kiln_client.ConflictError):
        job.cancel()
    job.delete()
    with pytest.raises(kiln_client.NotFoundError):
        client.jobs.get(job.id)


def test_failing_job_raises_job_failed_with_reason(client: kiln_client.Client, tmp_path: Path) -> None:
    # Accepted by the API (a valid SavedModel and inputs), rejected by the tracer: a table write.
    model = save_lookup_model(tmp_path / "lookup")
    with pytest.raises(kiln_client.JobFailed) as info:
        client.compile(model, example_inputs=np.array([1, 2], "int64"), labels=_label(), progress=False)
    err = info.value
    assert err.job.status is kiln_client.JobStatus.FAILED
    assert err.kind == "client_error", err.reason
    assert "lookup" in err.reason.lower() and err.reason == err.job.failure_reason
    assert err.log_tail, "the failure should come with the end of the compile log"


def test_timeout_fails_the_job_with_its_reason(client: kiln_client.Client, saved_model: Path) -> None:
    with pytest.raises(kiln_client.JobFailed) as info:
        client.compile(saved_model, timeout=1, labels=_label(), progress=False)
    assert "time" in info.value.reason.lower()


def test_rejected_upload_is_a_validation_error(client: kiln_client.Client, saved_model: Path) -> None:
    with pytest.raises(kiln_client.ValidationError) as info:
        client.compile(saved_model, signature="no_such_signature", labels=_label(), progress=False)
    assert info.value.status_code == 422 and info.value.request_id


def test_retry_after_dropped_connection_creates_one_job(
    kiln_service: RunningService, saved_model: Path
) -> None:
    port = int(kiln_service.url.rsplit(":", 1)[1])
    proxy = DroppingProxy(port)
    label = _label()
    try:
        with kiln_client.Client(proxy.url, max_retries=3) as via_proxy:
            job = via_proxy.compile(saved_model, labels=label, wait=False, progress=False)
    finally:
        proxy.close()
    assert proxy.connections >= 2 and b"POST /v1/compile" in proxy.dropped_request
    with kiln_client.Client(kiln_service.url) as direct:
        jobs = list(direct.jobs.list(label=label))
        assert [j.id for j in jobs] == [job.id], (
            f"the retried POST /v1/compile created {len(jobs)} jobs: the service must answer a "
            "replayed Idempotency-Key with the job it already created")
        jobs[0].wait()
