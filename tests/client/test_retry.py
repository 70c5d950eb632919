"""Retries: transient failures only, Retry-After honoured, compile deduplicated by its key."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from client_fakes import Recorder, job_payload, problem

import kiln_client
from kiln_client._retry import RetryPolicy, parse_retry_after


def _archive(tmp_path: Path) -> Path:
    path = tmp_path / "model.tar.gz"
    path.write_bytes(b"not really an archive, the mock does not care")
    return path


def test_retry_after_is_honoured(sleeps: list[float]) -> None:
    def handler(req: httpx.Request, i: int) -> httpx.Response:
        if i == 0:
            return problem(429, "rate_limited", "slow down", headers={"retry-after": "7"})
        if i == 1:
            return problem(503, "store_unavailable", "later", headers={"retry-after": "3"})
        return httpx.Response(200, json=job_payload())

    rec = Recorder(handler)
    job = rec.client().jobs.get("a" * 32)
    assert job.id == "a" * 32
    assert sleeps == [7.0, 3.0]
    assert len(rec.requests) == 3


def test_backoff_without_retry_after_grows_and_is_jittered(sleeps: list[float]) -> None:
    rec = Recorder(lambda req, i: httpx.Response(500, text="boom") if i < 3 else httpx.Response(200, json=job_payload()))
    rec.client(max_retries=3).jobs.get("a" * 32)
    policy = RetryPolicy()
    assert len(sleeps) == 3
    for attempt, delay in enumerate(sleeps):
        ceiling = min(policy.max_delay, policy.initial_delay * 2**attempt)
        assert ceiling / 2 <= delay <= ceiling


@pytest.mark.parametrize("status", [400, 401, 404, 409, 422])
def test_no_retry_on_4xx(status: int, sleeps: list[float]) -> None:
    rec = Recorder(lambda req, i: problem(status, "nope", "client error"))
    with pytest.raises(kiln_client.APIStatusError) as info:
        rec.client().jobs.get("x")
    assert info.value.status_code == status
    assert len(rec.requests) == 1
    assert sleeps == []


def test_gives_up_after_max_retries(sleeps: list[float]) -> None:
    rec = Recorder(lambda req, i: problem(503, "dependency_unavailable", "down"))
    with pytest.raises(kiln_client.InternalServerError):
        rec.client(max_retries=2).jobs.get("x")
    assert len(rec.requests) == 3


def test_connection_errors_are_retried_for_get(sleeps: list[float]) -> None:
    def handler(req: httpx.Request, i: int) -> httpx.Response:
        if i < 2:
            raise httpx.ConnectError("connection refused", request=req)
        return httpx.Response(200, json=job_payload())

    rec = Recorder(handler)
    assert rec.client().jobs.get("a" * 32).status is kiln_client.JobStatus.QUEUED
    assert len(rec.requests) == 3


def test_connection_error_surfaces_as_api_connection_error(sleeps: list[float]) -> None:
    def handler(req: httpx.Request, i: int) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=req)

    rec = Recorder(handler)
    with pytest.raises(kiln_client.APIConnectionError, match=r"could not reach Kiln at http://kiln\.test"):
        rec.client(max_retries=1).jobs.get("x")
    assert len(rec.requests) == 2


def test_timeout_maps_to_api_timeout_error(sleeps: list[float]) -> None:
    def handler(req: httpx.Request, i: int) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=req)

    with pytest.raises(kiln_client.APITimeoutError):
        Recorder(handler).client(max_retries=0).jobs.get("x")


def test_plain_post_is_not_retried_after_a_dropped_connection(sleeps: list[float]) -> None:
    def handler(req: httpx.Request, i: int) -> httpx.Response:
        raise httpx.RemoteProtocolError("server disconnected", request=req)

    rec = Recorder(handler)
    with pytest.raises(kiln_client.APIConnectionError):
        rec.client()._request("POST", "/v1/something")
    assert len(rec.requests) == 1


def test_compile_reuses_one_idempotency_key_across_retries(tmp_path: Path, sleeps: list[float]) -> None:
    def handler(req: httpx.Request, i: int) -> httpx.Response:
        if i == 0:
            raise httpx.RemoteProtocolError("server disconnected without a response", request=req)
        if i == 1:
            return problem(502, "bad_gateway", "proxy hiccup")
        return httpx.Response(202, json=job_payload(), headers={"location": "/v1/jobs/" + "a" * 32})

    rec = Recorder(handler)
    job = rec.client().compile(_archive(tmp_path), flags="--dynamic-batch-size", wait=False, progress=False)
    assert job.id == "a" * 32
    keys = [r.headers.get("idempotency-key") for r in rec.requests]
    assert len(keys) == 3 and keys[0] and len(set(keys)) == 1
    # The whole multipart body is re-sent on each attempt, byte for byte.
    assert rec.bodies[0] == rec.bodies[1] == rec.bodies[2]
    assert b"not really an archive" in rec.bodies[2]


def test_each_compile_call_gets_a_new_key(tmp_path: Path) -> None:
    rec = Recorder(lambda req, i: httpx.Response(202, json=job_payload()))
    client = rec.client()
    client.compile(_archive(tmp_path), wait=False, progress=False)
    client.compile(_archive(tmp_path), wait=False, progress=False)
    keys = {r.headers["idempotency-key"] for r in rec.requests}
    assert len(keys) == 2


def test_compile_form_fields(tmp_path: Path) -> None:
    rec = Recorder(lambda req, i: httpx.Response(202, json=job_payload()))
    rec.client().compile(
        _archive(tmp_path), flags=["--dynamic-batch-size"], target="xla", name="n1",
        labels={"team": "vision"}, timeout=120, placement={"exclude_ops": ["Softmax"]},
        wait=False, progress=False,
    )
    body = rec.bodies[0]
    assert b'name="flags"\r\n\r\n--dynamic-batch-size' in body
    assert b'name="timeout_seconds"\r\n\r\n120' in body
    assert json.dumps({"team": "vision"}).encode() in body
    assert b'"exclude_ops":["Softmax"]' in body
    assert b'name="model"; filename="model.tar.gz"' in body


def test_bad_flags_fail_before_upload(tmp_path: Path) -> None:
    rec = Recorder(lambda req, i: httpx.Response(202, json=job_payload()))
    with pytest.raises(kiln_client.InputError, match="--no-such-flag"):
        rec.client().compile(_archive(tmp_path), flags="--no-such-flag", wait=False, progress=False)
    assert rec.requests == []


def test_cancel_is_retried_as_idempotent(sleeps: list[float]) -> None:
    def handler(req: httpx.Request, i: int) -> httpx.Response:
        if i == 0:
            raise httpx.RemoteProtocolError("dropped", request=req)
        return httpx.Response(200, json=job_payload(status="cancelled"))

    rec = Recorder(handler)
    assert rec.client().jobs.cancel("a" * 32).status is kiln_client.JobStatus.CANCELLED
    assert len(rec.requests) == 2


async def test_async_client_retries_with_retry_after(sleeps: list[float]) -> None:
    def handler(req: httpx.Request, i: int) -> httpx.Response:
        if i == 0:
            return problem(429, "rate_limited", "slow down", headers={"retry-after": "2"})
        return httpx.Response(200, json=job_payload())

    rec = Recorder(handler)
    async with rec.async_client() as client:
        job = await client.jobs.get("a" * 32)
    assert isinstance(job, kiln_client.AsyncJob)
    assert sleeps == [2.0]


def test_parse_retry_after_http_date() -> None:
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("garbage") is None
    past = parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT")
    assert past == 0.0


def test_idempotency_key_in_flight_conflict_is_retried(tmp_path: Path, sleeps: list[float]) -> None:
    def handler(req: httpx.Request, i: int) -> httpx.Response:
        if i == 0:
            return problem(409, "idempotency_key_in_flight", "still being processed")
        return httpx.Response(200, json=job_payload(), headers={"idempotent-replayed": "true"})

    rec = Recorder(handler)
    assert rec.client().compile(_archive(tmp_path), wait=False, progress=False).id == "a" * 32
    assert len(rec.requests) == 2 and len(sleeps) == 1
