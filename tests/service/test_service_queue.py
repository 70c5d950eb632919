"""Queueing for real: the Redis broker (production column), a broker that is down, and the
embedded file broker opened on two data dirs by one process."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from service_helpers import assert_nothing_stored, assert_problem, good_inputs, upload_files

from kiln_service import migrations
from kiln_service.config import Settings
from kiln_service.main import create_app
from kiln_service.queue import create_celery_app, enqueue_compile

REDIS_URL = os.environ.get("KILN_TEST_REDIS_URL", "redis://127.0.0.1:6379")
#: This test folder's own Redis database number, so parallel suites do not collide.
REDIS_DB = 11


@pytest.fixture
def redis_url() -> Any:
    url = f"{REDIS_URL.rstrip('/')}/{REDIS_DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


async def _post(settings: Settings, model: bytes) -> tuple[Any, httpx.Response]:
    migrations.upgrade(settings.resolved_database_url)
    app = create_app(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        resp = await c.post("/v1/compile", files=upload_files(model, good_inputs()),
                            data={"target": "inf1"})
    return app, resp


async def test_job_lands_on_the_redis_queue(tmp_path: Path, redis_url: str, two_inputs_tgz: Path) -> None:
    settings = Settings(data_dir=tmp_path / "kiln", broker_url=redis_url)
    _, resp = await _post(settings, two_inputs_tgz.read_bytes())
    assert resp.status_code == 202, resp.text
    client = redis.Redis.from_url(redis_url)
    try:
        raw = client.lrange("kiln.inf1", 0, -1)
        assert client.llen("kiln.xla") == 0
    finally:
        client.close()
    assert len(raw) == 1
    message = json.loads(raw[0])
    assert message["headers"]["task"] == "kiln.compile"
    assert message["headers"]["id"] == resp.json()["id"]


async def test_broker_down_is_503_and_the_job_is_rolled_back(tmp_path: Path, two_inputs_tgz: Path) -> None:
    # No rate limit, so the request gets as far as queueing before Redis is needed.
    settings = Settings(data_dir=tmp_path / "kiln", broker_url="redis://127.0.0.1:1/0",
                        rate_limit_per_minute=0)
    app, resp = await _post(settings, two_inputs_tgz.read_bytes())
    body = assert_problem(resp, 503, "broker_unavailable")
    assert resp.headers["retry-after"] == "5" and "queue" in body["detail"]
    assert_nothing_stored(app, settings)


async def test_redis_down_refuses_before_the_upload_when_it_holds_the_rate_limit(
        tmp_path: Path, two_inputs_tgz: Path) -> None:
    settings = Settings(data_dir=tmp_path / "kiln", broker_url="redis://127.0.0.1:1/0")
    app, resp = await _post(settings, two_inputs_tgz.read_bytes())
    body = assert_problem(resp, 503, "broker_unavailable")
    assert resp.headers["retry-after"] == "5" and "shared limits store (Redis)" in body["detail"]
    assert_nothing_stored(app, settings)


def _messages_on(settings: Settings, queue: str) -> list[str]:
    """The job ids waiting on ``queue`` of an embedded broker (consumed)."""
    ids: list[str] = []
    with create_celery_app(settings).connection_for_read() as conn:
        simple = conn.SimpleQueue(queue, no_ack=True)
        while True:
            try:
                ids.append(simple.get(timeout=0.5).decode()[0][0])
            except simple.Empty:
                break
        simple.close()
    return ids


def test_two_embedded_brokers_in_one_process_each_get_their_messages(tmp_path: Path) -> None:
    # kombu's filesystem transport keeps declared bindings per process; the second broker folder
    # used to get no routing table, and its first messages were dropped without an error.
    brokers = [Settings(data_dir=tmp_path / name) for name in ("first", "second", "first")]
    for number, settings in enumerate(brokers):
        enqueue_compile(create_celery_app(settings), job_id=f"job-{number}", target="xla")
        assert (settings.broker_dir / "control" / "kiln.exchange").is_file()
    assert _messages_on(brokers[1], "kiln.xla") == ["job-1"]
    assert sorted(_messages_on(brokers[0], "kiln.xla")) == ["job-0", "job-2"]
