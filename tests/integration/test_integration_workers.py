"""Worker advertisement end to end on the production column (Redis, real processes, PostgreSQL
and SQLite job stores):
the running xla worker is listed by ``GET /v1/workers``; an inf1 job waits with a message saying
why until an inf1 worker (started with ``--hostname``) comes up and takes it; a stopped worker
leaves the list."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest
from integration_support import BIN, Stack, base_env, start

pytestmark = pytest.mark.integration

WAITING_INF1 = ("waiting for a worker that serves target 'inf1': none is live; "
                "start one with `kiln-worker --targets inf1`")


def _workers(stack: Stack, target: str | None = None) -> list[dict[str, Any]]:
    resp = stack.client.get("/v1/workers", params={"target": target} if target else None)
    assert resp.status_code == 200, resp.text
    items: list[dict[str, Any]] = resp.json()["items"]
    return items


def _wait_for_worker(stack: Stack, worker_id: str, timeout: float = 120.0) -> dict[str, Any]:
    """Poll ``GET /v1/workers`` until ``worker_id`` is listed (workers register once ready)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for worker in _workers(stack):
            if worker["id"] == worker_id:
                return worker
        for proc in stack.procs:
            assert proc.popen.poll() is None, f"{proc.name} exited:\n{proc.tail()}"
        time.sleep(0.3)
    raise AssertionError(f"{worker_id} never advertised itself:\n"
                         + "\n".join(p.tail() for p in stack.procs))


def test_workers_are_advertised_and_unserved_jobs_wait(
    prod_stack: Stack, zoo: Path, redis_url: str
) -> None:
    host = socket.gethostname()
    xla = _wait_for_worker(prod_stack, f"kiln-xla@{host}")
    assert xla["targets"] == ["xla"] and xla["host"] == host
    assert xla["pid"] == prod_stack.procs[1].popen.pid  # the kiln-worker process itself
    assert _workers(prod_stack, "inf1") == []

    job = prod_stack.submit(zoo / "mlp" / "model.tar.gz", zoo / "mlp" / "example_inputs.npz",
                            target="inf1", name="it-unserved")
    assert job["status"] == "queued" and job["stage_message"] == WAITING_INF1
    again = prod_stack.job(job["id"])
    assert again["status"] == "queued" and again["stage_message"] == WAITING_INF1

    # An inf1 worker with its own node name comes up: it is listed and takes the job.
    env = base_env(KILN_DATA_DIR=str(prod_stack.data_dir), KILN_DATABASE_URL=prod_stack.database_url,
                   KILN_BROKER_URL=redis_url, KILN_WORKER_ADVERTISE_SECONDS="1")
    inf1 = start("worker-inf1", [str(BIN / "kiln-worker"), "--targets", "inf1",
                                 "--hostname", "kiln-it-inf1@%h"], env, prod_stack.data_dir / "logs")
    try:
        stack = Stack(prod_stack.url, [*prod_stack.procs, inf1], prod_stack.data_dir)
        listed = _wait_for_worker(stack, f"kiln-it-inf1@{host}")
        assert listed["targets"] == ["inf1"] and listed["pid"] == inf1.popen.pid
        assert [w["id"] for w in _workers(prod_stack, "inf1")] == [f"kiln-it-inf1@{host}"]
        done = stack.wait(job["id"])
        assert done["attempts"] == 1 and done["stage_message"] != WAITING_INF1
        stack.client.close()
    finally:
        inf1.stop()
    # A worker that stops removes itself from the list at once.
    assert _workers(prod_stack, "inf1") == []
    assert [w["id"] for w in _workers(prod_stack)] == [f"kiln-xla@{host}"]
