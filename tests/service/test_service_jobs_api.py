"""Job, log and artifact routes over a real SQLite store and local artifact store."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Any

import anyio.to_thread
import httpx
from service_helpers import assert_problem

from kiln_client.models import Artifact, Failure, FailureKind, Job, JobList, JobStatus
from kiln_service.stores.artifacts import artifact_key
from kiln_service.stores.jobs import JobStore


def _store(app: Any) -> JobStore:
    store: JobStore = app.state.services.job_store
    return store


def _new(app: Any, **kw: Any) -> str:
    args: dict[str, Any] = {"target": "xla", "timeout_seconds": 60, "input_digests": {"model": "a" * 64}}
    args.update(kw)
    return _store(app).create_job(**args).id


def _succeed_with(app: Any, job_id: str, files: dict[str, bytes]) -> list[Artifact]:
    store, artifacts = _store(app), app.state.services.artifact_store
    claimed = store.claim_job(job_id=job_id, worker_id="test-worker")
    assert claimed is not None
    arts = []
    for name, data in files.items():
        size, sha = artifacts.put_stream(artifact_key(job_id, name, claimed.fence), [data])
        arts.append(Artifact(name=name, size=size, sha256=sha))
    assert store.finish_job(job_id=job_id, status="succeeded", artifacts=arts, fence=claimed.fence)
    return arts


async def test_list_newest_first_with_filters_and_pagination(client: httpx.AsyncClient, app: Any) -> None:
    ids = [_new(app, name=f"n{i}", labels={"team": "a" if i % 2 else "b"},
                target="inf1" if i == 0 else "xla") for i in range(5)]
    page = JobList.model_validate((await client.get("/v1/jobs")).json())
    assert [j.id for j in page.items] == ids[::-1] and page.next_cursor is None
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = JobList.model_validate((await client.get("/v1/jobs", params=params)).json())
        seen += [j.id for j in page.items]
        if (cursor := page.next_cursor) is None:
            break
    assert seen == ids[::-1]
    resp = await client.get("/v1/jobs", params=[("label", "team:a"), ("target", "xla")])
    assert [j["id"] for j in resp.json()["items"]] == [ids[3], ids[1]]
    assert [j["id"] for j in (await client.get("/v1/jobs?target=inf1")).json()["items"]] == [ids[0]]
    assert [j["id"] for j in (await client.get("/v1/jobs?name=n2")).json()["items"]] == [ids[2]]
    assert (await client.get("/v1/jobs?status=running")).json()["items"] == []
    assert_problem(await client.get("/v1/jobs?cursor=garbage"), 400, "invalid_cursor")
    assert_problem(await client.get("/v1/jobs?label=nocolon"), 422, "invalid_query")
    assert_problem(await client.get("/v1/jobs?limit=0"), 422, "invalid_request")
    assert_problem(await client.get("/v1/jobs?status=bogus"), 422, "invalid_request")


async def test_read_unknown_job_is_404_problem(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.get("/v1/jobs/" + "0" * 32), 404, "job_not_found")
    assert body["instance"] == "/v1/jobs/" + "0" * 32


async def test_unknown_route_and_method_are_problems(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/v2/nothing"), 404, "not_found")
    assert_problem(await client.put("/v1/jobs"), 405, "method_not_allowed")


async def test_request_id_is_echoed(client: httpx.AsyncClient) -> None:
    resp = await client.get("/v1/jobs/" + "1" * 32, headers={"X-Request-ID": "req-42"})
    assert resp.headers["x-request-id"] == "req-42" and resp.json()["request_id"] == "req-42"


async def test_cancel_queued_running_and_finished(client: httpx.AsyncClient, app: Any) -> None:
    queued = _new(app)
    resp = await client.post(f"/v1/jobs/{queued}/cancel")
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    assert_problem(await client.post(f"/v1/jobs/{queued}/cancel"), 409, "job_finished")
    running = _new(app)
    _store(app).claim_job(job_id=running, worker_id="w")
    resp = await client.post(f"/v1/jobs/{running}/cancel")
    assert resp.json()["status"] == "running" and _store(app).is_cancel_requested(job_id=running)


async def test_delete_finished_job_removes_everything(client: httpx.AsyncClient, app: Any) -> None:
    job_id = _new(app)
    artifacts = app.state.services.artifact_store
    artifacts.put_stream(f"jobs/{job_id}/upload/model", [b"model"])
    assert_problem(await client.delete(f"/v1/jobs/{job_id}"), 409, "job_not_finished")
    _store(app).append_logs(job_id=job_id, lines=["a line"])
    _succeed_with(app, job_id, {"report.json": b"{}"})
    assert (await client.delete(f"/v1/jobs/{job_id}")).status_code == 204
    assert artifacts.list_prefix(f"jobs/{job_id}/") == []
    assert_problem(await client.get(f"/v1/jobs/{job_id}"), 404, "job_not_found")
    assert _store(app).read_logs(job_id=job_id) == []


async def test_logs_plain_text_and_sse_with_resume(client: httpx.AsyncClient, app: Any) -> None:
    job_id = _new(app)
    _store(app).append_logs(job_id=job_id, lines=["one", "two", "three"])
    _succeed_with(app, job_id, {})
    resp = await client.get(f"/v1/jobs/{job_id}/logs")
    assert resp.headers["content-type"].startswith("text/plain") and resp.text == "one\ntwo\nthree\n"
    resp = await client.get(f"/v1/jobs/{job_id}/logs", headers={"Accept": "text/event-stream"})
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = _parse_sse(resp.text)
    assert events == [("1", None, "one"), ("2", None, "two"), ("3", None, "three"),
                      (None, "end", "succeeded")]
    resp = await client.get(f"/v1/jobs/{job_id}/logs?follow=true", headers={"Last-Event-ID": "2"})
    assert _parse_sse(resp.text) == [("3", None, "three"), (None, "end", "succeeded")]
    assert_problem(await client.get("/v1/jobs/" + "0" * 32 + "/logs"), 404, "job_not_found")


async def test_sse_follows_a_running_job_until_it_ends(client: httpx.AsyncClient, app: Any) -> None:
    app.state.services.settings.log_follow_poll_seconds = 0.05
    job_id = _new(app)
    store = _store(app)
    claimed = store.claim_job(job_id=job_id, worker_id="w")
    assert claimed is not None
    store.append_logs(job_id=job_id, lines=["before"])
    request = asyncio.create_task(client.get(f"/v1/jobs/{job_id}/logs?follow=true"))
    await asyncio.sleep(0.2)
    assert not request.done()  # still following: the job is running
    await anyio.to_thread.run_sync(lambda: store.append_logs(job_id=job_id, lines=["during"]))
    await asyncio.sleep(0.2)
    await anyio.to_thread.run_sync(lambda: store.finish_job(
        job_id=job_id, status="failed", fence=claimed.fence,
        failure=Failure(kind=FailureKind.CLIENT_ERROR, code="UnsupportedModel", message="m")))
    resp = await asyncio.wait_for(request, 30)
    assert _parse_sse(resp.text) == [("1", None, "before"), ("2", None, "during"), (None, "end", "failed")]


def _parse_sse(text: str) -> list[tuple[str | None, str | None, str]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            key, _, value = line.partition(": ")
            fields[key] = fields[key] + "\n" + value if key in fields else value
        if fields:
            events.append((fields.get("id"), fields.get("event"), fields.get("data", "")))
    return events


async def test_artifact_list_download_digest_and_ranges(client: httpx.AsyncClient, app: Any) -> None:
    job_id = _new(app)
    payload = bytes(range(256)) * 40
    (art,) = _succeed_with(app, job_id, {"compiled_model.tar.gz": payload})
    listed = (await client.get(f"/v1/jobs/{job_id}/artifacts")).json()
    assert [Artifact.model_validate(a) for a in listed] == [art]
    url = f"/v1/jobs/{job_id}/artifacts/compiled_model.tar.gz"
    resp = await client.get(url)
    digest = hashlib.sha256(payload).digest()
    assert resp.status_code == 200 and resp.content == payload
    assert resp.headers["x-checksum-sha256"] == digest.hex() == art.sha256
    assert resp.headers["digest"] == "sha-256=" + base64.b64encode(digest).decode()
    assert resp.headers["content-length"] == str(len(payload))
    assert resp.headers["etag"] == f'"{digest.hex()}"'
    part = await client.get(url, headers={"Range": "bytes=100-299"})
    assert part.status_code == 206 and part.content == payload[100:300]
    assert part.headers["content-range"] == f"bytes 100-299/{len(payload)}"
    tail = await client.get(url, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == payload[-10:]
    opened = await client.get(url, headers={"Range": f"bytes={len(payload) - 5}-"})
    assert opened.content == payload[-5:]
    assert_problem(await client.get(url, headers={"Range": f"bytes={len(payload)}-"}), 416,
                   "range_not_satisfiable")
    assert (await client.get(url, headers={"If-None-Match": f'"{digest.hex()}"'})).status_code == 304
    assert_problem(await client.get(f"/v1/jobs/{job_id}/artifacts/nope.bin"), 404, "artifact_not_found")


async def test_job_json_matches_the_wire_schema(client: httpx.AsyncClient, app: Any) -> None:
    job_id = _new(app, name="wire", labels={"k": "v"})
    job = Job.model_validate((await client.get(f"/v1/jobs/{job_id}")).json())
    assert job.id == job_id and job.status is JobStatus.QUEUED and job.labels == {"k": "v"}
