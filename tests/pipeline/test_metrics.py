"""Prometheus metrics: HTTP by route template and status, outcomes by failure code, no _created."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kiln_client.models import Failure, FailureKind
from kiln_service import migrations
from kiln_service.config import Settings
from kiln_service.main import create_app


@pytest.fixture
def app(tmp_path: Path) -> Any:
    settings = Settings(data_dir=tmp_path / "kiln", auth="off")
    migrations.upgrade(settings.resolved_database_url)
    return create_app(settings)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_metrics_answer_the_questions(app: Any) -> None:
    store = app.state.services.job_store
    for code in (None, "UnsupportedModel"):
        job = store.create_job(target="xla", timeout_seconds=60, input_digests={})
        claimed = store.claim_job(job_id=job.id, worker_id="w")
        assert claimed is not None
        failure = Failure(kind=FailureKind.CLIENT_ERROR, code=code, message="m") if code else None
        store.finish_job(job_id=job.id, status="failed" if code else "succeeded", failure=failure,
                         fence=claimed.fence)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://kiln.test") as client:
        assert (await client.get("/v1/jobs/0123456789abcdef")).status_code == 404
        assert (await client.get(f"/v1/jobs/{job.id}")).status_code == 200
        assert (await client.get("/v1/nothing-here")).status_code == 404
        text = (await client.get("/metrics")).text
    got = samples(text)
    route = (("method", "GET"), ("route", "/v1/jobs/{job_id}"))
    assert got[("kiln_http_requests_total", (*route, ("status", "404")))] == 1
    assert got[("kiln_http_requests_total", (*route, ("status", "200")))] == 1
    assert got[("kiln_http_requests_total", (("method", "GET"), ("route", "unmatched"),
                                             ("status", "404")))] == 1
    for status in ("404", "200"):  # duration by route and status too
        assert got[("kiln_http_request_duration_seconds_count", (*route, ("status", status)))] == 1
    assert job.id not in text and "0123456789abcdef" not in text  # templates, never raw paths
    assert got[("kiln_job_failures_total", (("code", "UnsupportedModel"), ("kind", "client_error"),
                                            ("target", "xla")))] == 1
    assert got[("kiln_jobs_finished_total", (("status", "succeeded"), ("target", "xla")))] == 1
    assert got[("kiln_job_queue_wait_seconds_count", (("target", "xla"),))] == 2
    assert got[("kiln_job_duration_seconds_count", (("target", "xla"),))] == 2
    assert ("kiln_webhook_deliveries_total" in text) or "kiln_webhook_deliveries" in text
    assert "_created" not in text
