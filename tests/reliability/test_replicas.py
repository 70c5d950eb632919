"""Issue 10, point 6: two API replicas (two real ``kiln-service serve`` processes) on one Redis
share the per-tenant rate limit and the in-flight ``Idempotency-Key`` answer.

Both replicas use the same job store (a SQLite file migrated here first) and the same Redis
database (``KILN_TEST_REDIS_URL``, database 14, flushed before and after); auth is on, with keys
made in the job store. No worker runs: accepted jobs simply wait in the queue.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fault_support import wait_for
from integration_support import BIN, Proc, base_env, free_port, start, wait_ready

from kiln_service import migrations
from kiln_service.stores._limits import rate_limits
from kiln_service.stores.jobs import JobStore

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "examples" / "mlp" / "mlp.tar.gz"
INPUTS = ROOT / "examples" / "mlp" / "example_inputs.npz"
REDIS_URL = os.environ.get("KILN_TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/") + "/14"
#: Submissions per tenant per minute: a token comes back every 20 s, far longer than these tests.
PER_MINUTE = 3


@dataclass
class Replicas:
    """Two API processes on one Redis and one job store."""

    urls: list[str]
    procs: list[Proc]
    store: JobStore
    redis: Any

    def key(self, tenant: str) -> str:
        return self.store.create_api_key(tenant=tenant).key

    def submit(self, replica: int, key: str, **headers: str) -> httpx.Response:
        files = {"model": ("m.tar.gz", MODEL.read_bytes()), "example_inputs": ("x.npz", INPUTS.read_bytes())}
        return httpx.post(f"{self.urls[replica]}/v1/compile", files=files, timeout=60,
                          headers={"Authorization": f"Bearer {key}", **headers})


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    root = tmp_path_factory.mktemp("replicas")
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    database = f"sqlite:///{root / 'data' / 'kiln.db'}"
    migrations.upgrade(database)
    env = base_env(KILN_DATA_DIR=str(root / "data"), KILN_DATABASE_URL=database,
                   KILN_BROKER_URL=REDIS_URL, KILN_AUTH="on",
                   KILN_RATE_LIMIT_PER_MINUTE=str(PER_MINUTE), KILN_MAX_ACTIVE_JOBS_PER_TENANT="0")
    ports = [free_port(), free_port()]
    procs = [start(f"api-{i}", [str(BIN / "kiln-service"), "serve", "--port", str(port)], env,
                   root / "logs") for i, port in enumerate(ports)]
    store = JobStore(database)
    try:
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        for url in urls:
            wait_ready(url, procs)
        yield Replicas(urls, procs, store, client)
    finally:
        for proc in procs:
            proc.stop()
        store.dispose()
        client.flushdb()
        client.close()


def test_rate_limit_holds_across_two_replicas(replicas: Replicas) -> None:
    key = replicas.key("acme")
    accepted = [replicas.submit(i % 2, key) for i in range(PER_MINUTE)]  # replica 0, 1, 0
    assert [r.status_code for r in accepted] == [202] * PER_MINUTE, [r.text for r in accepted]
    for replica in (1, 0):
        refused = replicas.submit(replica, key)
        assert refused.status_code == 429, refused.text
        assert refused.json()["code"] == "rate_limited"
        assert 1 <= int(refused.headers["retry-after"]) <= 60 // PER_MINUTE
        assert "across all API replicas" in refused.json()["detail"]
    assert replicas.submit(1, replicas.key("other")).status_code == 202  # its own bucket
    assert len(replicas.store.list_jobs(tenant="acme").items) == PER_MINUTE
    # The bucket is Redis's, not a table's nor a process's.
    assert replicas.redis.exists("kiln:rate:acme")
    with replicas.store.engine.connect() as conn:
        assert conn.execute(rate_limits.select()).all() == []
    print(f"\ntwo replicas, {PER_MINUTE}/min: accepted {PER_MINUTE} (0,1,0), then 429 on both")


def _multipart(boundary: str) -> bytes:
    parts = [("model", "m.tar.gz", MODEL.read_bytes()), ("example_inputs", "x.npz", INPUTS.read_bytes())]
    body = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; "
                    f"filename=\"{filename}\"\r\n\r\n".encode() + data + b"\r\n"
                    for name, filename, data in parts)
    return body + f"--{boundary}--\r\n".encode()


def test_in_flight_idempotency_key_is_409_on_the_other_replica(replicas: Replicas) -> None:
    key, idem = replicas.key("idem"), "order-42"
    body = _multipart("kilnreplicas")
    head = (f"POST /v1/compile HTTP/1.1\r\nHost: kiln\r\nAuthorization: Bearer {key}\r\n"
            f"Idempotency-Key: {idem}\r\nContent-Length: {len(body)}\r\n"
            "Content-Type: multipart/form-data; boundary=kilnreplicas\r\n\r\n").encode()
    port = int(replicas.urls[0].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head + body[:1000])  # the first request is still arriving on replica 0…
        wait_for(lambda: replicas.redis.exists(f"kiln:inflight:idem:{idem}"),
                 "replica 0 to hold the key", timeout=60)
        busy = replicas.submit(1, key, **{"Idempotency-Key": idem})  # …when replica 1 gets a retry
        assert busy.status_code == 409, busy.text
        assert busy.json()["code"] == "idempotency_key_in_flight" and busy.headers["retry-after"]
        sock.sendall(body[1000:])
        sock.settimeout(120)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 202"), answer[:500]
    first = httpx.Response(202, content=answer.split(b"\r\n\r\n", 1)[1]).json()
    replay = replicas.submit(1, key, **{"Idempotency-Key": idem})
    assert replay.status_code == 202 and replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["id"] == first["id"]
    assert not replicas.redis.exists(f"kiln:inflight:idem:{idem}")  # released when it ended
    assert [j.id for j in replicas.store.list_jobs(tenant="idem").items] == [first["id"]]
