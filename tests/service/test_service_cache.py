"""The compile cache through the API, on SQLite and on PostgreSQL: hits, tenants, deletes,
purge, cached failures and eviction.

The real app runs in-process over a real job store and the local artifact store, with API keys
for two tenants. Jobs are submitted through ``POST /v1/compile`` with the bundled example model;
the "worker" finishing one is the job store's worker API plus ``cache.record_outcome``, exactly
what ``kiln-worker`` calls (a real compile is in ``tests/integration/test_integration_cache.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from _support.archives import tar_gz_as_zip
from _support.cache_jobs import TOOLCHAIN, finish_like_a_worker
from _support.postgres import fresh_database
from kiln_client.codes import FailureCode
from kiln_client.digest import model_digest
from kiln_client.models import Artifact, Failure, Job
from kiln_service import cache, migrations
from kiln_service.config import Settings
from kiln_service.main import create_app
from kiln_service.stores.artifacts import ArtifactStore, LocalArtifactStore, artifact_key
from kiln_service.stores.jobs import JobStore

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "examples" / "mlp" / "mlp.tar.gz"
INPUTS = ROOT / "examples" / "mlp" / "example_inputs.npz"


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this module, migrated; dropped afterwards."""
    with fresh_database("kiln_test_cache") as url:
        migrations.upgrade(url)
        yield url


@dataclass
class Env:
    app: Any
    http: httpx.AsyncClient
    store: JobStore
    artifacts: LocalArtifactStore
    keys: dict[str, str]
    settings: Settings

    async def submit(self, tenant: str, model: Path = MODEL, **fields: str) -> Job:
        files = {"model": (model.name, model.read_bytes()),
                 "example_inputs": ("x.npz", INPUTS.read_bytes())}
        resp = await self.http.post("/v1/compile", files=files, data=fields,
                                    headers=self.auth(tenant))
        assert resp.status_code == 202, resp.text
        return Job.model_validate(resp.json())

    def auth(self, tenant: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[tenant]}"}

    def finish(self, job_id: str, failure: Failure | None = None) -> list[Artifact]:
        """Run the worker's side: claim, store outputs, finish, record the outcome."""
        return finish_like_a_worker(self.store, self.artifacts, job_id, failure=failure,
                                    max_bytes=self.settings.cache_max_bytes)


@pytest.fixture(params=["sqlite", "postgresql"])
async def env(request: pytest.FixtureRequest, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Env]:
    """The app with auth on, keys for tenants ``a`` and ``b``, and a live worker advertising
    :data:`TOOLCHAIN` for ``xla``."""
    monkeypatch.setenv("KILN_AUTH", "on")
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'kiln.db'}"
        migrations.upgrade(url)
    else:
        url = request.getfixturevalue("pg_url")
        with JobStore(url).engine.begin() as conn:
            conn.exec_driver_sql("TRUNCATE api_keys, job_logs, jobs, workers, compile_cache, "
                                 "job_events, webhook_endpoints CASCADE")
    settings = Settings(data_dir=tmp_path / "kiln", database_url=url, auth="on")
    app = create_app(settings)
    store: JobStore = app.state.services.job_store
    store.register_worker(worker_id="kiln-xla@test", targets=["xla"], host="test", pid=1,
                          version="0.1.0", toolchains={"xla": TOOLCHAIN})
    keys = {t: store.create_api_key(tenant=t).key for t in ("a", "b")}
    artifacts = app.state.services.artifact_store
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://kiln.test") as http:
        yield Env(app, http, store, artifacts, keys, settings)
    store.dispose()


def _stored(artifacts: ArtifactStore, job_id: str) -> list[str]:
    return artifacts.list_prefix(f"jobs/{job_id}/")


async def test_hit_reuses_the_artifacts_per_tenant_and_survives_deletes(
        env: Env, tmp_path: Path) -> None:
    first = await env.submit("a")
    assert first.status.value == "queued" and first.cache is not None and not first.cache.hit
    arts = env.finish(first.id)

    hit = await env.submit("a", tar_gz_as_zip(MODEL, tmp_path / "same.zip"))
    assert hit.status.value == "succeeded" and hit.cache is not None
    assert (hit.cache.hit, hit.cache.job) == (True, first.id)
    assert hit.artifacts == arts and hit.attempts == 0
    logs = (await env.http.get(f"/v1/jobs/{hit.id}/logs", headers=env.auth("a"))).text
    assert f"compiled by job {first.id}" in logs
    assert _stored(env.artifacts, hit.id) == [], "a hit stores nothing of its own"

    other_tenant = await env.submit("b")
    assert other_tenant.status.value == "queued" and not other_tenant.cache.hit  # type: ignore[union-attr]
    opted_out = await env.submit("a", cache="false")
    assert opted_out.status.value == "queued" and opted_out.cache is None

    # Deleting the source keeps what the hit serves; deleting the hit keeps the entry's files.
    assert (await env.http.delete(f"/v1/jobs/{first.id}", headers=env.auth("a"))).status_code == 204
    got = await env.http.get(f"/v1/jobs/{hit.id}/artifacts/compiled_model.tar.gz",
                             headers=env.auth("a"))
    assert got.status_code == 200 and got.content == b"compiled " + first.id.encode()
    assert (await env.http.delete(f"/v1/jobs/{hit.id}", headers=env.auth("a"))).status_code == 204
    assert _stored(env.artifacts, first.id), "the cache entry still refers to the files"
    again = await env.submit("a")
    assert again.cache is not None and again.cache.job == first.id

    # Purge: the entry goes; the files stay while job `again` serves them, then go with it.
    purged = await env.http.delete("/v1/cache", headers=env.auth("a"))
    assert purged.status_code == 200 and purged.json()["purged"] == 1
    assert purged.json()["entries"] == 0
    assert (await env.submit("a")).status.value == "queued"
    assert (await env.http.get(f"/v1/jobs/{again.id}/artifacts/compiled_model.tar.gz",
                               headers=env.auth("a"))).status_code == 200
    assert (await env.http.delete(f"/v1/jobs/{again.id}", headers=env.auth("a"))).status_code == 204
    assert _stored(env.artifacts, first.id) == []
    metrics = (await env.http.get("/metrics")).text
    assert 'kiln_compile_cache_lookups_total{result="hit",target="xla"} 2.0' in metrics


async def test_deterministic_failures_are_cached_limits_are_not(env: Env) -> None:
    unsupported = Failure.of(FailureCode.UNSUPPORTED_MODEL, "op Foo (node bar) is not supported")
    failed = await env.submit("a", flags="--dynamic-batch-size")
    env.finish(failed.id, unsupported)
    replay = await env.submit("a", flags="--dynamic-batch-size")
    assert replay.status.value == "failed" and replay.failure == unsupported
    assert replay.cache is not None and replay.cache.job == failed.id
    assert [a.name for a in replay.artifacts] == ["compile.log"]

    timed_out = await env.submit("a", placement="all")
    env.finish(timed_out.id, Failure.of(FailureCode.TIME_OUT, "ran past 60 s"))
    assert (await env.submit("a", placement="all")).status.value == "queued"
    usage = (await env.http.get("/v1/cache", headers=env.auth("a"))).json()
    assert usage["entries"] == 1 and usage["bytes"] == replay.artifacts[0].size


def test_eviction_keeps_the_newest_within_the_bound(store: JobStore, tmp_path: Path) -> None:
    artifacts = LocalArtifactStore(tmp_path / "artifacts")
    ids = []
    for i in range(4):
        job = store.create_job(target="xla", timeout_seconds=60, input_digests={},
                               tenant="t", cache_key=f"{i:064x}")
        claimed = store.claim_job(job_id=job.id, worker_id="w")
        assert claimed is not None
        size, sha = artifacts.put_stream(artifact_key(job.id, "m", claimed.fence), [b"x" * 100])
        done = store.finish_job(job_id=job.id, status="succeeded", fence=claimed.fence,
                                artifacts=[Artifact(name="m", size=size, sha256=sha)])
        assert done is not None
        assert cache.record_outcome(store, artifacts, job=done, toolchain=TOOLCHAIN,
                                    max_bytes=250)
        if i == 0:  # a source whose job is gone: its files go when its entry is evicted
            cache.delete_job(store, artifacts, job_id=job.id, tenant="t")
            assert _stored(artifacts, job.id) == [f"jobs/{job.id}/attempt-1/m"]
        ids.append(job.id)
        assert store.cache_usage(tenant="t")[1] <= 250
    assert store.cache_usage(tenant="t") == (2, 200)
    with store.engine.begin() as conn:
        kept = {r[0] for r in conn.exec_driver_sql("SELECT source_job FROM compile_cache")}
    assert kept == set(ids[2:])
    assert _stored(artifacts, ids[0]) == [], "evicted and unreferenced: deleted"
    assert _stored(artifacts, ids[1]), "evicted, but its own job still serves the files"


async def test_model_digest_alone_hits_or_asks_for_the_upload_per_tenant(env: Env) -> None:
    # POST /v1/compile with model_digest instead of the model: the client's digest of the
    # archive it would upload, and every other part (the example inputs too) as usual.
    async def by_digest(tenant: str, **fields: str) -> httpx.Response:
        files = {"example_inputs": ("x.npz", INPUTS.read_bytes())}
        return await env.http.post("/v1/compile", files=files, headers=env.auth(tenant),
                                   data={"model_digest": model_digest(MODEL), **fields})

    async def jobs_of(tenant: str) -> list[Any]:
        listed = await env.http.get("/v1/jobs", headers=env.auth(tenant))
        return list(listed.json()["items"])

    missed = await by_digest("a", webhook_url="https://93.184.215.14/hook")
    assert missed.status_code == 409 and missed.json()["code"] == "upload_required", missed.text
    assert missed.headers["content-type"].startswith("application/problem+json")
    assert await jobs_of("a") == [] and env.artifacts.list_prefix("jobs/") == []
    with env.store.engine.begin() as conn:
        hooks = conn.exec_driver_sql("SELECT count(*) FROM webhook_endpoints").scalar()
    assert hooks == 0, "the job's webhook endpoint is not kept on a miss"

    first = await env.submit("a")
    arts = env.finish(first.id)
    hit = await by_digest("a")
    assert hit.status_code == 202, hit.text
    job = Job.model_validate(hit.json())
    assert job.status.value == "succeeded" and job.cache is not None
    assert (job.cache.hit, job.cache.job, job.artifacts) == (True, first.id, arts)
    got = await env.http.get(f"/v1/jobs/{job.id}/artifacts/compiled_model.tar.gz",
                             headers=env.auth("a"))
    assert got.content == b"compiled " + first.id.encode()

    other_tenant = await by_digest("b")
    assert other_tenant.status_code == 409 and await jobs_of("b") == []
    changed = await by_digest("a", flags="--dynamic-batch-size")
    assert changed.status_code == 409
    assert len(await jobs_of("a")) == 2  # the upload and the hit only

    off = await by_digest("a", cache="false")
    assert off.status_code == 422 and off.json()["code"] == "invalid_field"
    both = await env.http.post(
        "/v1/compile", headers=env.auth("a"), data={"model_digest": model_digest(MODEL)},
        files={"model": (MODEL.name, MODEL.read_bytes())})
    assert both.status_code == 422 and both.json()["code"] == "invalid_model_source"
