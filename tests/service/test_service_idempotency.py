"""``Idempotency-Key`` on POST /v1/compile: replays return the first job, never a second one."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from service_helpers import assert_problem, good_inputs, upload_files

from kiln_service.config import Settings


def _form(model: Path, name: str = "first") -> dict[str, Any]:
    return {"files": upload_files(model.read_bytes(), good_inputs()),
            "data": {"name": name, "labels": json.dumps({"team": "ml"})}}


def _job_ids(app: Any) -> list[str]:
    return [j.id for j in app.state.services.job_store.list_jobs().items]


async def test_same_key_and_body_replays_the_first_job(
    client: httpx.AsyncClient, app: Any, two_inputs_tgz: Path
) -> None:
    headers = {"Idempotency-Key": "retry-me-1"}
    first = await client.post("/v1/compile", headers=headers, **_form(two_inputs_tgz))
    again = await client.post("/v1/compile", headers=headers, **_form(two_inputs_tgz))
    assert first.status_code == 202 and again.status_code == 202, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert again.headers["location"] == first.headers["location"]
    assert _job_ids(app) == [first.json()["id"]]


async def test_same_key_other_body_is_422_and_creates_nothing(
    client: httpx.AsyncClient, app: Any, two_inputs_tgz: Path
) -> None:
    headers = {"Idempotency-Key": "retry-me-2"}
    first = await client.post("/v1/compile", headers=headers, **_form(two_inputs_tgz))
    other = await client.post("/v1/compile", headers=headers,
                              **_form(two_inputs_tgz, name="second"))
    body = assert_problem(other, 422, "idempotency_key_reused")
    assert first.json()["id"] in body["detail"]
    assert _job_ids(app) == [first.json()["id"]]


async def test_other_keys_and_no_key_create_separate_jobs(
    client: httpx.AsyncClient, app: Any, two_inputs_tgz: Path
) -> None:
    a = await client.post("/v1/compile", headers={"Idempotency-Key": "a"}, **_form(two_inputs_tgz))
    b = await client.post("/v1/compile", headers={"Idempotency-Key": "b"}, **_form(two_inputs_tgz))
    c = await client.post("/v1/compile", **_form(two_inputs_tgz))
    ids = {r.json()["id"] for r in (a, b, c)}
    assert len(ids) == 3 and set(_job_ids(app)) == ids


async def test_malformed_key_is_400(client: httpx.AsyncClient, app: Any, two_inputs_tgz: Path,
                                    settings: Settings) -> None:
    resp = await client.post("/v1/compile", headers={"Idempotency-Key": "x" * 300},
                             **_form(two_inputs_tgz))
    assert_problem(resp, 400, "invalid_idempotency_key")
    assert _job_ids(app) == []


async def test_key_in_flight_is_409(client: httpx.AsyncClient, app: Any,
                                    two_inputs_tgz: Path) -> None:
    """While the first request's body is still arriving, a second with its key gets 409."""
    form = _form(two_inputs_tgz)
    encoded = httpx.Request("POST", "http://kiln/v1/compile", **form)
    body = encoded.read()
    released = asyncio.Event()
    started = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield body[:100]
        started.set()
        await released.wait()
        yield body[100:]

    headers = {"Idempotency-Key": "slow", "Content-Type": encoded.headers["content-type"]}
    first = asyncio.create_task(client.post("/v1/compile", headers=headers, content=slow_body()))
    await asyncio.wait_for(started.wait(), 10)
    second = await client.post("/v1/compile", headers={"Idempotency-Key": "slow"}, **form)
    assert_problem(second, 409, "idempotency_key_in_flight")
    assert second.headers["retry-after"]
    released.set()
    done = await asyncio.wait_for(first, 30)
    assert done.status_code == 202, done.text
    replay = await client.post("/v1/compile", headers={"Idempotency-Key": "slow"}, **form)
    assert replay.json()["id"] == done.json()["id"]
    assert _job_ids(app) == [done.json()["id"]]
