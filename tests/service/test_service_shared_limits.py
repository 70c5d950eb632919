"""Shared limits without Redis: two apps on one job store (SQLite, PostgreSQL) share the rate
limit and the in-flight ``Idempotency-Key``; the leases of both stores (database and a real
Redis, ``KILN_TEST_REDIS_URL`` database 14) lapse, and only their holder renews or releases them."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from service_helpers import assert_problem

from kiln_service import migrations
from kiln_service._shared_state import RedisState, SharedState
from kiln_service.config import Settings
from kiln_service.main import create_app
from kiln_service.stores._limits import in_flight_requests, rate_limits
from kiln_service.stores.jobs import JobStore

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "examples" / "mlp" / "mlp.tar.gz"
REDIS_URL = os.environ.get("KILN_TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/") + "/14"


@pytest.fixture
def shared_db(store: JobStore) -> JobStore:
    """The ``store`` fixture's database, without limits rows of earlier tests."""
    with store.engine.begin() as conn:
        conn.execute(rate_limits.delete())
        conn.execute(in_flight_requests.delete())
    return store


@pytest.fixture
async def two_apps(shared_db: JobStore, tmp_path: Path) -> AsyncIterator[list[httpx.AsyncClient]]:
    """Two API apps (as two replicas would be) on one database, embedded broker, 3 jobs/min."""
    url = shared_db.engine.url.render_as_string(hide_password=False)
    clients = []
    apps = [create_app(Settings(data_dir=tmp_path / "kiln", database_url=url, auth="off",
                                rate_limit_per_minute=3)) for _ in range(2)]
    for app in apps:
        transport = httpx.ASGITransport(app=app)
        clients.append(httpx.AsyncClient(transport=transport, base_url="http://kiln.test"))
    try:
        yield clients
    finally:
        for client, app in zip(clients, apps, strict=True):
            await client.aclose()
            app.state.services.job_store.dispose()


async def _post(client: httpx.AsyncClient, **headers: str) -> httpx.Response:
    return await client.post("/v1/compile", files={"model": ("m.tar.gz", MODEL.read_bytes())},
                             headers=headers)


async def test_two_apps_on_one_database_share_the_rate_limit(
        two_apps: list[httpx.AsyncClient], shared_db: JobStore) -> None:
    statuses = [(await _post(two_apps[i % 2])).status_code for i in range(3)]
    assert statuses == [202, 202, 202]
    for client in reversed(two_apps):
        assert_problem(await _post(client), 429, "rate_limited")
    with shared_db.engine.connect() as conn:
        assert [row.tenant for row in conn.execute(rate_limits.select())] == ["default"]


async def test_in_flight_key_held_by_one_app_is_409_on_the_other(
        two_apps: list[httpx.AsyncClient]) -> None:
    first_app: Any = two_apps[0]._transport.app  # type: ignore[attr-defined]
    async with first_app.state.services.in_flight.hold("default", "k-1"):
        assert_problem(await _post(two_apps[1], **{"Idempotency-Key": "k-1"}), 409,
                       "idempotency_key_in_flight")
    assert (await _post(two_apps[1], **{"Idempotency-Key": "k-1"})).status_code == 202


@pytest.fixture
def redis_state() -> Iterator[RedisState]:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield RedisState(REDIS_URL)
    client.flushdb()
    client.close()


@pytest.fixture(params=["sqlite", "postgresql", "redis"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SharedState]:
    """Each shared store: the job store on SQLite and on PostgreSQL, and Redis."""
    if request.param == "redis":
        yield request.getfixturevalue("redis_state")
        return
    url = f"sqlite:///{tmp_path / 'kiln.db'}" if request.param == "sqlite" else \
        request.getfixturevalue("pg_url")
    migrations.upgrade(url)
    database = JobStore(url)
    with database.engine.begin() as conn:
        conn.execute(rate_limits.delete())
        conn.execute(in_flight_requests.delete())
    yield database
    database.dispose()


def test_leases_lapse_and_only_their_holder_renews_or_releases(state: SharedState) -> None:
    lease = {"tenant": "t", "key": "k"}
    assert state.claim_in_flight(**lease, holder="a", lease_seconds=0.5)
    assert not state.claim_in_flight(**lease, holder="b", lease_seconds=0.5)
    state.release_in_flight(**lease, holder="b")  # not b's: nothing happens
    assert not state.renew_in_flight(**lease, holder="b", lease_seconds=0.5)
    assert not state.claim_in_flight(**lease, holder="b", lease_seconds=0.5)
    time.sleep(1.0)  # a's lease lapses (its replica stopped renewing it)
    assert state.claim_in_flight(**lease, holder="b", lease_seconds=30)
    assert not state.renew_in_flight(**lease, holder="a", lease_seconds=30)
    assert state.renew_in_flight(**lease, holder="b", lease_seconds=30)
    state.release_in_flight(**lease, holder="b")
    assert state.claim_in_flight(**lease, holder="c", lease_seconds=30)


def test_rate_tokens_per_tenant(state: SharedState) -> None:
    assert [state.take_rate_token(tenant="t", per_minute=2) for _ in range(2)] == [0.0, 0.0]
    wait = state.take_rate_token(tenant="t", per_minute=2)
    assert 0 < wait <= 30
    assert state.take_rate_token(tenant="u", per_minute=2) == 0.0
