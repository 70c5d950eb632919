"""Queueing for real: the Redis broker (production column) and a broker that is down."""

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
    settings = Settings(data_dir=tmp_path / "kiln", broker_url="redis://127.0.0.1:1/0")
    app, resp = await _post(settings, two_inputs_tgz.read_bytes())
    body = assert_problem(resp, 503, "broker_unavailable")
    assert resp.headers["retry-after"] == "5" and "queue" in body["detail"]
    assert_nothing_stored(app, settings)
