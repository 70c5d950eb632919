"""Webhooks against real receivers on loopback and a real API process (Standard Webhooks).

The job is driven through the job store's worker-side calls (claim, progress, finish), exactly
the calls a worker makes, so these tests need no TensorFlow compile; the README test runs a real
one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from typing import Any

import httpx
import pytest
from pipeline_support import Api, receiver

from kiln_client import webhooks
from kiln_service.stores.jobs import JobStore

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


def submit(api: Api, model: bytes, inputs: bytes, **fields: Any) -> dict[str, Any]:
    """POST /v1/compile with the given webhook fields; the job stays queued (no worker)."""
    data = {k: json.dumps(v) if isinstance(v, list) else v for k, v in fields.items()}
    r = httpx.post(f"{api.url}/v1/compile", data=data, timeout=30,
                   files={"model": ("m.tar.gz", model), "example_inputs": ("x.npz", inputs)})
    assert r.status_code == 202, r.text
    job: dict[str, Any] = r.json()
    return job


def run_job(api: Api, job_id: str, *, status: str = "succeeded") -> None:
    """What a worker does to the job in the store: claim, two stages, finish."""
    store = JobStore(f"sqlite:///{api.env['KILN_DATA_DIR']}/kiln.db")
    try:
        job = store.claim_job(job_id=job_id, worker_id="test-worker")
        assert job is not None
        store.update_progress(job_id=job_id, stage="tracing", progress=0.2, fence=job.fence)
        store.update_progress(job_id=job_id, stage="compiling", progress=0.5, fence=job.fence)
        failure = None
        if status == "failed":
            from kiln_client.models import Failure, FailureKind

            failure = Failure(kind=FailureKind.CLIENT_ERROR, code="UnsupportedModel", message="no")
        assert store.finish_job(job_id=job_id, status=status, failure=failure, fence=job.fence)
    finally:
        store.dispose()


def outcomes(api: Api) -> dict[str, float]:
    """``kiln_webhook_deliveries_total`` by outcome, from /metrics."""
    found = re.findall(r'kiln_webhook_deliveries_total\{outcome="(\w+)"\} ([0-9.]+)',
                       httpx.get(f"{api.url}/metrics").text)
    return {outcome: float(value) for outcome, value in found}


def plain_hmac(secret: str, headers: dict[str, str], body: bytes) -> str:
    """The signature computed from the specification alone, without Kiln's code."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def test_job_and_tenant_endpoints_get_signed_cloud_events(
    api: Api, model_tgz: bytes, inputs_npz: bytes
) -> None:
    with receiver() as rec:
        created = httpx.post(f"{api.url}/v1/webhooks", json={"url": f"{rec.url}/tenant",
                                                            "events": ["job.succeeded"]})
        assert created.status_code == 201, created.text
        tenant_secret = created.json()["secret"]
        assert tenant_secret.startswith("whsec_") and tenant_secret != SECRET
        job = submit(api, model_tgz, inputs_npz, webhook_url=f"{rec.url}/job",
                     webhook_events=["job.running", "job.stage", "job.succeeded"],
                     webhook_secret=SECRET)
        run_job(api, job["id"])
        got = rec.wait_for(lambda rs: {r.path for r in rs if r.event["type"] == "job.succeeded"}
                           == {"/job", "/tenant"})
    job_events = [r.event["type"] for r in got if r.path == "/job"]
    assert job_events == ["job.running", "job.stage", "job.stage", "job.succeeded"]
    for req in got:
        secret = SECRET if req.path == "/job" else tenant_secret
        assert req.headers["webhook-signature"] == plain_hmac(secret, req.headers, req.body)
        event = webhooks.verify(req.body, req.headers, secret)
        assert event["specversion"] == "1.0" and event["subject"] == job["id"]
        assert event["data"]["job"]["id"] == job["id"]
        with pytest.raises(webhooks.WebhookVerificationError, match="signature"):
            webhooks.verify(req.body, req.headers, SECRET if secret != SECRET else tenant_secret)
    final = next(r for r in got if r.path == "/job" and r.event["type"] == "job.succeeded")
    assert final.event["data"]["job"]["status"] == "succeeded"
    stale = int(final.headers["webhook-timestamp"]) + 3600
    with pytest.raises(webhooks.WebhookVerificationError, match="old"):
        webhooks.verify(final.body, final.headers, SECRET, now=stale)
    endpoint = httpx.get(f"{api.url}/v1/jobs/{job['id']}/webhook").json()
    assert endpoint["secret"] == SECRET and endpoint["job_id"] == job["id"]
    assert httpx.delete(f"{api.url}/v1/webhooks/{created.json()['id']}").status_code == 204


def test_receiver_failing_three_times_gets_the_event_four_times(
    api: Api, model_tgz: bytes, inputs_npz: bytes
) -> None:
    before = outcomes(api)
    with receiver() as rec:
        rec.script = [500, 500, 500]
        job = submit(api, model_tgz, inputs_npz, webhook_url=f"{rec.url}/hook",
                     webhook_secret=SECRET)
        run_job(api, job["id"])
        got = rec.wait_for(lambda rs: len(rs) >= 4)
        time.sleep(1.0)  # nothing more may come after the 200
        got = list(rec.requests)
    assert len(got) == 4
    assert len({r.headers["webhook-id"] for r in got}) == 1
    assert all(webhooks.verify(r.body, r.headers, SECRET)["type"] == "job.succeeded" for r in got)
    gaps = [got[i + 1].at - got[i].at for i in range(3)]
    # Exponential backoff from 0.2 s: attempts are never earlier than 0.2, 0.4, 0.8 s apart.
    assert all(gap >= 0.2 * 2**i * 0.9 for i, gap in enumerate(gaps)), gaps
    endpoint = httpx.get(f"{api.url}/v1/jobs/{job['id']}/webhook").json()
    deliveries = httpx.get(f"{api.url}/v1/webhooks/{endpoint['id']}/deliveries").json()
    assert [(d["status"], d["attempts"], d["last_response_code"]) for d in deliveries] == [
        ("succeeded", 4, 200)]
    assert deliveries[0]["id"] == got[0].headers["webhook-id"]
    after = outcomes(api)
    assert {k: after.get(k, 0) - before.get(k, 0) for k in after} == {"retrying": 3, "succeeded": 1}


def test_redelivery_on_request_keeps_the_webhook_id(
    api: Api, model_tgz: bytes, inputs_npz: bytes
) -> None:
    with receiver() as rec:
        job = submit(api, model_tgz, inputs_npz, webhook_url=f"{rec.url}/hook")
        run_job(api, job["id"], status="failed")
        first = rec.wait_for(lambda rs: len(rs) == 1)[0]
        endpoint = httpx.get(f"{api.url}/v1/jobs/{job['id']}/webhook").json()
        delivery = first.headers["webhook-id"]
        r = httpx.post(f"{api.url}/v1/webhooks/{endpoint['id']}/deliveries/{delivery}/redeliver")
        assert r.status_code == 202, r.text
        again = rec.wait_for(lambda rs: len(rs) == 2)[1]
    assert again.headers["webhook-id"] == delivery
    assert again.body == first.body
    assert webhooks.verify(again.body, again.headers, endpoint["secret"])["type"] == "job.failed"


def test_receiver_down_for_good_is_marked_failed(tmp_path: Any, model_tgz: bytes,
                                                 inputs_npz: bytes) -> None:
    from pipeline_support import api_env, free_port

    env = api_env(tmp_path / "kiln", KILN_WEBHOOK_ALLOW_PRIVATE_URLS="true",
                  KILN_WEBHOOK_RETRY_BASE_SECONDS="0.2", KILN_WEBHOOK_GIVE_UP_SECONDS="1.5")
    api = Api(f"http://127.0.0.1:{free_port()}", env, tmp_path / "api.log")
    api.start()
    try:
        dead = f"http://127.0.0.1:{free_port()}/nobody-listens"
        job = submit(api, model_tgz, inputs_npz, webhook_url=dead)
        run_job(api, job["id"])
        endpoint = httpx.get(f"{api.url}/v1/jobs/{job['id']}/webhook").json()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            deliveries = httpx.get(f"{api.url}/v1/webhooks/{endpoint['id']}/deliveries").json()
            if deliveries and deliveries[0]["status"] == "failed":
                break
            time.sleep(0.2)
        assert deliveries[0]["status"] == "failed", deliveries
        assert deliveries[0]["attempts"] >= 2 and deliveries[0]["last_response_code"] is None
        assert "Connect" in deliveries[0]["last_error"]
        second = submit(api, model_tgz, inputs_npz, webhook_url=dead)
    finally:
        api.stop()
    run_job(api, second["id"])  # its events stay undispatched: the sender is stopped
    assert_pruning_keeps_what_is_owed(api, done=job["id"], owed=second["id"])


def assert_pruning_keeps_what_is_owed(api: Api, *, done: str, owed: str) -> None:
    """Retention: the finished job's events and failed delivery go; undispatched events stay."""
    from datetime import timedelta

    from sqlalchemy import create_engine, func, select

    from kiln_service.stores._event_schema import job_events, webhook_deliveries
    from kiln_service.stores._schema import utcnow
    from kiln_service.webhooks.store import WebhookStore

    engine = create_engine(f"sqlite:///{api.env['KILN_DATA_DIR']}/kiln.db")
    try:
        def count(table: Any, job_id: str) -> int:
            with engine.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(table)
                                        .where(table.c.job_id == job_id)).scalar_one())

        store = WebhookStore(engine)
        assert store.prune(older_than=utcnow() - timedelta(days=1)) == 0  # nothing old enough
        before = count(job_events, owed)
        assert count(job_events, done) > 0 and count(webhook_deliveries, done) == 1 and before > 0
        assert store.prune(older_than=utcnow() + timedelta(seconds=1)) > 0
        assert count(job_events, done) == 0 and count(webhook_deliveries, done) == 0
        assert count(job_events, owed) == before
    finally:
        engine.dispose()


def test_api_restart_between_job_end_and_delivery_loses_no_event(
    api: Api, model_tgz: bytes, inputs_npz: bytes
) -> None:
    with receiver() as rec:
        job = submit(api, model_tgz, inputs_npz, webhook_url=f"{rec.url}/hook",
                     webhook_secret=SECRET)
        api.kill()  # the only API is gone: nobody can deliver
        run_job(api, job["id"])
        time.sleep(0.5)
        assert rec.requests == []
        api.start()
        got = rec.wait_for(lambda rs: len(rs) >= 1)
    assert webhooks.verify(got[0].body, got[0].headers, SECRET)["type"] == "job.succeeded"


def test_webhook_fields_are_checked(api: Api, model_tgz: bytes, inputs_npz: bytes) -> None:
    bad = httpx.post(f"{api.url}/v1/webhooks", json={"url": "ftp://example.com/x"})
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_webhook_url"
    bad = httpx.post(f"{api.url}/v1/webhooks", json={"url": "https://example.com/x",
                                                     "events": ["job.exploded"]})
    assert bad.status_code == 422 and "job.succeeded" in bad.json()["detail"]
    bad = httpx.post(f"{api.url}/v1/webhooks", json={"url": "https://example.com/x",
                                                     "secret": "hunter2"})
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_webhook_secret"
    made = httpx.post(f"{api.url}/v1/webhooks", json={"url": "https://example.com/x"}).json()
    listed = httpx.get(f"{api.url}/v1/webhooks").json()
    assert made["id"] in [e["id"] for e in listed] and all(e["secret"] is None for e in listed)
    assert httpx.get(f"{api.url}/v1/webhooks/{made['id']}/secret").json()["secret"] == made["secret"]
    assert httpx.delete(f"{api.url}/v1/webhooks/{made['id']}").status_code == 204
    assert httpx.get(f"{api.url}/v1/webhooks/{made['id']}").status_code == 404
    assert made["id"] not in [e["id"] for e in httpx.get(f"{api.url}/v1/webhooks").json()]
