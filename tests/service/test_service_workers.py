"""Worker advertisement: the ``workers`` table (SQLite and PostgreSQL), ``GET /v1/workers``, and
what ``POST /v1/compile`` does with a target no live worker serves (queue with a waiting message,
or 503 ``no_worker_for_target`` when ``KILN_REJECT_UNSERVED_TARGETS`` is set)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from service_helpers import assert_nothing_stored, assert_problem, good_inputs, upload_files
from sqlalchemy import update

from kiln_service import migrations
from kiln_service.config import Settings
from kiln_service.stores._schema import utcnow, workers
from kiln_service.stores._workers import unserved_target_message
from kiln_service.stores.jobs import JobStore

WAITING_INF1 = ("waiting for a worker that serves target 'inf1': none is live; "
                "start one with `kiln-worker --targets inf1`")


def _register(store: JobStore, worker_id: str, targets: list[str], pid: int = 4242) -> None:
    store.register_worker(worker_id=worker_id, targets=targets, host="host-a", pid=pid,
                          version="1.2.3")


def _age(store: JobStore, worker_id: str, seconds: float) -> None:
    """Make a worker look last seen ``seconds`` ago (as if its heartbeat had stopped)."""
    with store.engine.begin() as conn:
        conn.execute(update(workers).where(workers.c.id == worker_id)
                     .values(last_seen_at=utcnow() - timedelta(seconds=seconds)))


@pytest.fixture
def wstore(store: JobStore) -> JobStore:
    """The job store fixture with an empty workers table (PostgreSQL's is shared by the session)."""
    with store.engine.begin() as conn:
        conn.execute(workers.delete())
    return store


def test_register_list_touch_and_unregister(wstore: JobStore) -> None:
    info = wstore.register_worker(worker_id="kiln-xla@a", targets=["xla"], host="a", pid=11,
                                  version="0.1.0")
    assert info.targets == ["xla"] and info.started_at == info.last_seen_at
    _register(wstore, "kiln-xla-inf1@b", ["xla", "inf1"])
    live = wstore.list_workers(live_within_seconds=60)
    assert sorted(w.id for w in live) == ["kiln-xla-inf1@b", "kiln-xla@a"]
    stored = next(w for w in live if w.id == "kiln-xla@a")
    assert (stored.host, stored.pid, stored.version, stored.targets) == ("a", 11, "0.1.0", ["xla"])
    assert [w.id for w in wstore.list_workers(live_within_seconds=60, target="inf1")] == [
        "kiln-xla-inf1@b"]
    assert wstore.live_targets(live_within_seconds=60) == {"xla", "inf1"}

    before = stored.last_seen_at
    _age(wstore, "kiln-xla@a", 30)
    assert wstore.touch_worker(worker_id="kiln-xla@a") is True
    touched = next(w for w in wstore.list_workers() if w.id == "kiln-xla@a")
    assert touched.last_seen_at >= before and touched.started_at == stored.started_at

    assert wstore.unregister_worker(worker_id="kiln-xla@a") is True
    assert wstore.touch_worker(worker_id="kiln-xla@a") is False  # gone: the worker re-registers
    assert [w.id for w in wstore.list_workers()] == ["kiln-xla-inf1@b"]


def test_liveness_window_and_reregistration(wstore: JobStore) -> None:
    _register(wstore, "kiln-inf1@a", ["inf1"], pid=1)
    _age(wstore, "kiln-inf1@a", 120)
    assert wstore.list_workers(live_within_seconds=60) == []
    assert wstore.live_targets(live_within_seconds=60) == set()
    assert [w.id for w in wstore.list_workers(live_within_seconds=300)] == ["kiln-inf1@a"]
    # A restarted worker with the same node name replaces its row instead of failing.
    _register(wstore, "kiln-inf1@a", ["inf1", "xla"], pid=2)
    rows = wstore.list_workers(live_within_seconds=60)
    assert [(w.id, w.pid, w.targets) for w in rows] == [("kiln-inf1@a", 2, ["inf1", "xla"])]


def test_migration_adds_workers_table_after_initial(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    migrations.upgrade(url, "0001_initial")
    assert migrations.current_revision(url) == "0001_initial"
    migrations.upgrade(url)
    # Later revisions (0003_api_keys, …) come after it; the head is whatever is newest.
    assert migrations.current_revision(url) == migrations.head_revision()
    store = JobStore(url)
    try:
        _register(store, "kiln-xla@a", ["xla"])
        assert store.live_targets(live_within_seconds=60) == {"xla"}
    finally:
        store.dispose()


async def test_workers_route_lists_live_workers(client: httpx.AsyncClient, app: Any) -> None:
    store: JobStore = app.state.services.job_store
    resp = await client.get("/v1/workers")
    assert resp.status_code == 200 and resp.json() == {"items": [], "liveness_seconds": 60.0}
    _register(store, "kiln-xla@a", ["xla"])
    _register(store, "kiln-inf1@b", ["inf1"])
    _register(store, "kiln-xla@gone", ["xla"])
    _age(store, "kiln-xla@gone", 600)
    body = (await client.get("/v1/workers")).json()
    assert sorted((w["id"], tuple(w["targets"])) for w in body["items"]) == [
        ("kiln-inf1@b", ("inf1",)), ("kiln-xla@a", ("xla",))]
    assert {"host", "pid", "version", "started_at", "last_seen_at"} <= set(body["items"][0])
    only = (await client.get("/v1/workers", params={"target": "inf1"})).json()["items"]
    assert [w["id"] for w in only] == ["kiln-inf1@b"]
    assert_problem(await client.get("/v1/workers", params={"target": "tpu"}), 422, "unknown_target")


async def test_unserved_target_is_queued_with_waiting_message(
        client: httpx.AsyncClient, app: Any, two_inputs_tgz: Path) -> None:
    store: JobStore = app.state.services.job_store
    _register(store, "kiln-xla@a", ["xla"])
    files = upload_files(two_inputs_tgz.read_bytes(), good_inputs())
    resp = await client.post("/v1/compile", files=files, data={"target": "inf1"})
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert job["status"] == "queued" and job["stage_message"] == WAITING_INF1
    assert unserved_target_message("inf1") == WAITING_INF1
    assert store.get_job(job_id=job["id"]).stage_message == WAITING_INF1  # stored, not only shown
    assert (await client.get(f"/v1/jobs/{job['id']}")).json()["stage_message"] == WAITING_INF1
    listed = (await client.get("/v1/jobs")).json()["items"]
    assert [j["stage_message"] for j in listed] == [WAITING_INF1]

    # An inf1 worker comes up: the job no longer says it waits for one.
    _register(store, "kiln-inf1@b", ["inf1"])
    assert (await client.get(f"/v1/jobs/{job['id']}")).json()["stage_message"] is None
    # Its heartbeat stops: the message is back.
    _age(store, "kiln-inf1@b", 600)
    assert (await client.get(f"/v1/jobs/{job['id']}")).json()["stage_message"] == WAITING_INF1

    # A served target gets no message.
    xla = await client.post("/v1/compile", files=files, data={"target": "xla"})
    assert xla.status_code == 202 and xla.json()["stage_message"] is None


class TestRejectUnservedTargets:
    @pytest.fixture
    def app_settings(self, tmp_path: Path) -> Settings:
        return Settings(data_dir=tmp_path / "kiln", reject_unserved_targets=True)

    async def test_503_and_nothing_stored(self, client: httpx.AsyncClient, app: Any,
                                          app_settings: Settings, two_inputs_tgz: Path) -> None:
        _register(app.state.services.job_store, "kiln-xla@a", ["xla"])
        files = upload_files(two_inputs_tgz.read_bytes(), good_inputs())
        resp = await client.post("/v1/compile", files=files, data={"target": "inf1"})
        body = assert_problem(resp, 503, "no_worker_for_target")
        assert "inf1" in body["detail"] and "kiln-worker --targets inf1" in body["detail"]
        assert resp.headers["retry-after"] == "30"
        assert_nothing_stored(app, app_settings)

    async def test_served_target_still_accepted(self, client: httpx.AsyncClient, app: Any,
                                                two_inputs_tgz: Path) -> None:
        _register(app.state.services.job_store, "kiln-xla@a", ["xla"])
        files = upload_files(two_inputs_tgz.read_bytes(), good_inputs())
        resp = await client.post("/v1/compile", files=files, data={"target": "xla"})
        assert resp.status_code == 202, resp.text
        assert resp.json()["stage_message"] is None

    async def test_readyz_does_not_depend_on_workers(self, client: httpx.AsyncClient) -> None:
        resp = await client.get("/readyz")
        assert resp.status_code == 200, resp.text
        assert "workers" not in resp.json()["checks"]
