"""Fixtures of the integration tests: real API, real Celery worker, real Redis and PostgreSQL.

* ``prod_stack``: ``kiln-service migrate`` on a fresh PostgreSQL database
  ``kiln_test_int_<random>`` (dropped after), ``kiln-service serve`` on a free loopback port and
  ``kiln-worker --targets xla --concurrency 2`` on Redis db 3 (flushed before and after).
* ``embedded_stack``: ``kiln-service up`` with the embedded defaults (filesystem broker, SQLite,
  local artifacts) in a temporary data dir.

Every process is started in its own session and stopped by its pid (then its group).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from integration_support import BIN, ZOO_SCRIPT, Stack, base_env, free_port, start, wait_ready

from _support.postgres import fresh_database

REDIS_URL = os.environ.get("KILN_TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/") + "/3"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SavedModels of ``tests/worker/model_zoo.py``, built in a subprocess."""
    out = tmp_path_factory.mktemp("zoo")
    proc = subprocess.run([sys.executable, str(ZOO_SCRIPT), str(out)], env=base_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this session, dropped afterwards."""
    with fresh_database("kiln_test_int") as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """Redis db 3, this suite's own, emptied before and after."""
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    try:
        yield REDIS_URL
    finally:
        client.flushdb()
        client.close()


@pytest.fixture(scope="session", params=["postgresql", "sqlite"])
def prod_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[Stack]:
    """API (uvicorn) + Celery worker on Redis, with the job store on PostgreSQL, then on SQLite.

    Every test using it runs against both job stores (the same code, only the URL differs).
    """
    data = tmp_path_factory.mktemp(f"prod-{request.param}")
    database = (request.getfixturevalue("pg_url") if request.param == "postgresql"
                else f"sqlite:///{data / 'kiln.db'}")
    redis.Redis.from_url(redis_url).flushdb()  # no message of the other stack's jobs
    env = base_env(
        KILN_DATA_DIR=str(data), KILN_DATABASE_URL=database, KILN_BROKER_URL=redis_url,
        KILN_WORKER_POLL_SECONDS="0.3", KILN_WORKER_KILL_GRACE_SECONDS="1",
        KILN_WORKER_LOG_FLUSH_SECONDS="0.3", KILN_LOG_FOLLOW_POLL_SECONDS="0.2",
    )
    migrate = subprocess.run([str(BIN / "kiln-service"), "migrate"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert migrate.returncode == 0, migrate.stderr
    port = free_port()
    api = start("api", [str(BIN / "kiln-service"), "serve", "--port", str(port)], env, data / "logs")
    worker = start("worker", [str(BIN / "kiln-worker"), "--targets", "xla", "--concurrency", "2"],
                   env, data / "logs")
    stack = Stack(f"http://127.0.0.1:{port}", [api, worker], data, database_url=database)
    try:
        wait_ready(stack.url, stack.procs)
        yield stack
    finally:
        stack.close()


@pytest.fixture(scope="module")
def embedded_stack(request: pytest.FixtureRequest,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """``kiln-service up``: API and worker with the embedded defaults in a temporary data dir
    (plus the test module's ``EMBEDDED_ENV``, if it has one)."""
    data = tmp_path_factory.mktemp("embedded")
    port = free_port()
    env = base_env(KILN_WORKER_POLL_SECONDS="0.3", KILN_WORKER_KILL_GRACE_SECONDS="1",
                   **getattr(request.module, "EMBEDDED_ENV", {}))
    up = start("up", [str(BIN / "kiln-service"), "up", "--port", str(port), "--data-dir",
                      str(data)], env, data / "logs-test")
    stack = Stack(f"http://127.0.0.1:{port}", [up], data)
    try:
        wait_ready(stack.url, stack.procs)
        yield stack
    finally:
        stack.close()
