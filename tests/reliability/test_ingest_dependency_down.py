"""Promise 8, API half: with PostgreSQL or the broker down, every route answers 503 problem+json
with ``Retry-After`` (never a 500), and a refused ``POST /v1/compile`` leaves nothing stored.

The faults are real: the job store points at a closed port on 127.0.0.1 (nothing listens), the
broker at another closed Redis port; the "database up" case uses a fresh PostgreSQL database.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ingest_support import (
    file_entry,
    model_tar,
    pb_node,
    running_api,
    saved_model_pb,
    settings_for,
    stored_files,
    tar_bytes,
)

from _support.postgres import fresh_database
from kiln_service import migrations
from kiln_service.stores.jobs import JobStore


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def fresh_pg() -> Iterator[str]:
    with fresh_database("kiln_test_ingest") as url:
        migrations.upgrade(url)
        yield url


def _requests(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """One request per operation of the app's own OpenAPI document, path parameters filled in."""
    out = []
    for path, item in spec["paths"].items():
        concrete = path.replace("{job_id}", "0" * 32).replace("{name}", "report.json")
        for method in item:
            kwargs: dict[str, Any] = {}
            if path == "/v1/compile":
                kwargs["files"] = {"model": ("m.tgz", model_tar())}
            elif path == "/v1/webhooks" and method == "post":  # a valid body: the store is next
                kwargs["json"] = {"url": "http://127.0.0.1:9/kiln"}  # allowed below; never sent
            out.append((method.upper(), concrete, kwargs))
    return out


async def test_ingest_database_and_broker_down_every_route_503(tmp_path: Path) -> None:
    settings = settings_for(
        tmp_path / "kiln",
        database_url=f"postgresql+psycopg://postgres@127.0.0.1:{_closed_port()}/kiln",
        broker_url=f"redis://127.0.0.1:{_closed_port()}/0", webhook_allow_private_urls=True)
    async with running_api(settings) as (_, client):
        spec = (await client.get("/openapi.json")).json()
        requests = _requests(spec)
        assert len(requests) >= 10 and any(r[1] == "/v1/compile" for r in requests)
        for method, path, kwargs in requests:
            resp = await client.request(method, path, **kwargs)
            # liveness is about the process only; the error catalogue is a static page
            if path in ("/livez", "/docs/errors"):
                assert resp.status_code == 200, resp.text
                continue
            assert resp.status_code == 503, (method, path, resp.status_code, resp.text)
            assert resp.headers["content-type"] == "application/problem+json"
            assert int(resp.headers["retry-after"]) > 0, (method, path)
            assert resp.json()["detail"], (method, path)
    assert stored_files(settings) == []


async def test_ingest_broker_down_compile_503_leaves_nothing(tmp_path: Path, fresh_pg: str) -> None:
    # No rate limit: with one, Redis (down) would refuse the request before its upload is read.
    settings = settings_for(tmp_path / "kiln", database_url=fresh_pg, rate_limit_per_minute=0,
                            broker_url=f"redis://127.0.0.1:{_closed_port()}/0")
    async with running_api(settings) as (_, client):
        resp = await client.post("/v1/compile", files={"model": ("m.tgz", model_tar())},
                                 data={"signature": "serving_default"})
        # The minimal model has no signature, so first check that a valid upload gets as far
        # as the queue: an empty meta graph is refused before, with a 422 that names the problem.
        assert resp.status_code == 422 and resp.json()["code"] == "unknown_signature", resp.text
        resp = await client.post("/v1/compile", files={"model": ("m.tgz", _real_model())})
        assert resp.status_code == 503, resp.text
        assert resp.json()["code"] == "broker_unavailable"
        assert int(resp.headers["retry-after"]) > 0
    assert stored_files(settings) == []
    store = JobStore(fresh_pg)
    try:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM jobs").scalar_one() == 0
    finally:
        store.dispose()


def _real_model() -> bytes:
    """A ``saved_model.pb`` with a ``serving_default`` signature, written by hand (no TensorFlow)."""
    pb = saved_model_pb([pb_node("serving_default_x", "Placeholder"),
                         pb_node("y", "Identity", "serving_default_x")], {}, "y:0")
    return tar_bytes([file_entry("model/saved_model.pb", pb)])
