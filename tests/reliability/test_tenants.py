"""Promises 6 and 10: API keys, tenant isolation and fairness, on SQLite and on PostgreSQL.

The real app (``create_app``) runs in-process over a real job store (a SQLite file, or a fresh
PostgreSQL database ``kiln_test_tenants_<random>`` created here and dropped after), the local
artifact store and the embedded Celery transport. Keys are made with the store and with the
real ``kiln-service keys`` command. Jobs are submitted through ``POST /v1/compile`` with the
bundled example model; the "worker" finishing one is the job store's own worker API.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.engine import make_url

import kiln_client
from _support.postgres import fresh_database
from kiln_client.models import Artifact
from kiln_service import migrations
from kiln_service._shared_state import US, gcra
from kiln_service.config import Settings
from kiln_service.embedded import _prepare_auth
from kiln_service.main import create_app
from kiln_service.stores._keys import PREFIX_CHARS, api_keys
from kiln_service.stores.artifacts import artifact_key
from kiln_service.stores.jobs import JobStore

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MODEL = ROOT / "examples" / "mlp" / "mlp.tar.gz"
INPUTS = ROOT / "examples" / "mlp" / "example_inputs.npz"
MISSING_ID = "0" * 32


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this module, migrated; dropped afterwards."""
    with fresh_database("kiln_test_tenants") as url:
        migrations.upgrade(url)
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty job store URL on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        sqlite_url = f"sqlite:///{tmp_path / 'kiln.db'}"
        migrations.upgrade(sqlite_url)
        return sqlite_url
    pg: str = request.getfixturevalue("pg_url")
    store = JobStore(pg)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE api_keys, job_logs, jobs, workers CASCADE")
    store.dispose()
    return pg


@pytest.fixture
def limits() -> dict[str, Any]:
    """Fairness settings of the app (tests that exercise them override this fixture's values)."""
    return {"rate_limit_per_minute": 0, "max_active_jobs_per_tenant": 0}


@dataclass
class Kiln:
    """The running app, its store and an HTTP client calling it in-process."""

    app: Any
    store: JobStore
    http: httpx.AsyncClient
    settings: Settings

    async def submit(self, key: str | None, name: str = "m") -> httpx.Response:
        """``POST /v1/compile`` of the example model with ``key``."""
        files = {"model": ("m.tar.gz", MODEL.read_bytes()),
                 "example_inputs": ("x.npz", INPUTS.read_bytes())}
        return await self.http.post("/v1/compile", files=files, data={"name": name},
                                    headers=bearer(key))


def bearer(key: str | None) -> dict[str, str]:
    """The Authorization header for ``key`` (none for ``None``)."""
    return {} if key is None else {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def kiln(database_url: str, tmp_path: Path, limits: dict[str, Any],
               monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Kiln]:
    """The API with auth on (the default) over ``database_url``."""
    monkeypatch.delenv("KILN_AUTH", raising=False)
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, **limits)
    assert settings.auth_enabled, "auth must be on by default"
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://kiln.test") as http:
        yield Kiln(app, app.state.services.job_store, http, settings)
    app.state.services.job_store.dispose()


def comparable(resp: httpx.Response, job_id: str) -> tuple[int, str, dict[str, Any]]:
    """A 404's status, media type and body without what names the request (id, path)."""
    body = dict(resp.json())
    body.pop("request_id", None)
    body.pop("instance", None)
    body["detail"] = str(body.get("detail")).replace(job_id, "<id>")
    return resp.status_code, resp.headers["content-type"], body


def finish_with_artifact(kiln: Kiln, job_id: str) -> None:
    """Do what a worker does: claim the job, log, store an artifact, succeed."""
    claimed = kiln.store.claim_job(job_id=job_id, worker_id="test-worker")
    assert claimed is not None
    kiln.store.append_logs(job_id=job_id, lines=["secret line of tenant a"])
    size, sha = kiln.app.state.services.artifact_store.put_stream(
        artifact_key(job_id, "report.json", attempt=claimed.fence), [b'{"owner": "a"}'])
    art = Artifact(name="report.json", size=size, sha256=sha)
    assert kiln.store.finish_job(job_id=job_id, status="succeeded", artifacts=[art],
                                 fence=claimed.fence)


async def test_each_tenant_sees_only_its_own_jobs(kiln: Kiln) -> None:
    key_a = kiln.store.create_api_key(tenant="a").key
    key_b = kiln.store.create_api_key(tenant="b").key
    done_a = (await kiln.submit(key_a, "a-done")).json()["id"]
    queued_a = (await kiln.submit(key_a, "a-queued")).json()["id"]
    resp_b = await kiln.submit(key_b, "b-job")
    assert resp_b.status_code == 202, resp_b.text
    job_b = resp_b.json()["id"]
    finish_with_artifact(kiln, done_a)

    listed_a = (await kiln.http.get("/v1/jobs", headers=bearer(key_a))).json()["items"]
    listed_b = (await kiln.http.get("/v1/jobs", headers=bearer(key_b))).json()["items"]
    assert {j["id"] for j in listed_a} == {done_a, queued_a}
    assert [j["id"] for j in listed_b] == [job_b]

    # Every route that names a job: B asking for A's job is answered as for a missing id.
    for method, path in [("GET", "/v1/jobs/{}"), ("GET", "/v1/jobs/{}/logs"),
                         ("GET", "/v1/jobs/{}/artifacts"),
                         ("GET", "/v1/jobs/{}/artifacts/report.json"),
                         ("POST", "/v1/jobs/{}/cancel"), ("DELETE", "/v1/jobs/{}")]:
        for job_a in (done_a, queued_a):
            theirs = await kiln.http.request(method, path.format(job_a), headers=bearer(key_b))
            missing = await kiln.http.request(method, path.format(MISSING_ID), headers=bearer(key_b))
            assert theirs.status_code == 404, (method, path, theirs.text)
            assert comparable(theirs, job_a) == comparable(missing, MISSING_ID), (method, path)

    # Nothing B tried changed A's jobs; A still reads, cancels and deletes them.
    assert (await kiln.http.get(f"/v1/jobs/{queued_a}", headers=bearer(key_a))).json()["status"] == "queued"
    logs = await kiln.http.get(f"/v1/jobs/{done_a}/logs", headers=bearer(key_a))
    assert "secret line of tenant a" in logs.text
    download = await kiln.http.get(f"/v1/jobs/{done_a}/artifacts/report.json", headers=bearer(key_a))
    assert download.content == b'{"owner": "a"}'
    cancel = await kiln.http.post(f"/v1/jobs/{queued_a}/cancel", headers=bearer(key_a))
    assert cancel.status_code == 200 and cancel.json()["status"] == "cancelled"
    assert (await kiln.http.delete(f"/v1/jobs/{done_a}", headers=bearer(key_a))).status_code == 204
    assert [j["id"] for j in (await kiln.http.get("/v1/jobs", headers=bearer(key_b))).json()["items"]] == [job_b]


async def test_missing_bad_and_revoked_keys_are_401_with_how_to(kiln: Kiln) -> None:
    new = kiln.store.create_api_key(tenant="a", name="ci")
    assert (await kiln.http.get("/v1/jobs", headers=bearer(new.key))).status_code == 200
    kiln.store.revoke_api_key(key_id_or_prefix=new.info.id)
    forged = new.key[:PREFIX_CHARS] + "x" * (len(new.key) - PREFIX_CHARS)
    for headers in ({}, bearer(new.key), bearer(forged), bearer("not-a-kiln-key"),
                    {"Authorization": f"Basic {new.key}"}):
        for method, path in [("GET", "/v1/jobs"), ("POST", "/v1/compile"), ("GET", "/v1/workers"),
                             ("GET", f"/v1/jobs/{MISSING_ID}")]:
            resp = await kiln.http.request(method, path, headers=headers)
            assert resp.status_code == 401, (headers, path, resp.text)
            assert resp.headers["www-authenticate"].startswith("Bearer")
            assert resp.headers["content-type"] == "application/problem+json"
            assert resp.json()["code"] == "unauthorized"
            assert "kiln-service keys create --tenant NAME" in resp.json()["detail"]
    # Probes, metrics and the API description stay open.
    for path in ("/livez", "/metrics", "/openapi.json", "/docs"):
        assert (await kiln.http.get(path)).status_code == 200, path
    assert "HTTPBearer" in (await kiln.http.get("/openapi.json")).json()["components"]["securitySchemes"]


async def test_keys_are_stored_hashed(kiln: Kiln, database_url: str) -> None:
    new = kiln.store.create_api_key(tenant="a")
    assert new.key.startswith("kiln_") and len(new.key) >= 40
    with kiln.store.engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(select(api_keys)).mappings()]
    assert len(rows) == 1
    assert rows[0]["key_sha256"] == hashlib.sha256(new.key.encode()).hexdigest()
    secret_part = new.key[PREFIX_CHARS:]
    assert all(secret_part not in str(value) for value in rows[0].values())
    if database_url.startswith("sqlite"):
        db = Path(make_url(database_url).database or "")
        for path in db.parent.glob(db.name + "*"):  # the file, its WAL and shared memory
            assert new.key.encode() not in path.read_bytes()
            assert secret_part.encode() not in path.read_bytes()
    listed = kiln.store.list_api_keys(tenant="a")
    assert [k.prefix for k in listed] == [new.key[:PREFIX_CHARS]]
    assert secret_part not in repr(listed)


def run_keys(database_url: str, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real ``kiln-service keys …`` command against ``database_url``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    env.update(KILN_DATABASE_URL=database_url, KILN_DATA_DIR=str(data_dir))
    return subprocess.run([str(BIN / "kiln-service"), "keys", *args], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


async def test_keys_cli_create_list_revoke(kiln: Kiln, database_url: str, tmp_path: Path) -> None:
    created = run_keys(database_url, tmp_path, "create", "--tenant", "acme", "--name", "ci")
    assert created.returncode == 0, created.stderr
    line = next(ln for ln in created.stdout.splitlines() if "created key" in ln)
    key = line.split()[-1]
    assert key.startswith("kiln_") and "acme" in line
    assert key not in created.stderr

    submitted = await kiln.submit(key, "acme-job")
    assert submitted.status_code == 202, submitted.text
    assert kiln.store.get_job(job_id=submitted.json()["id"]).tenant == "acme"

    listing = run_keys(database_url, tmp_path, "list", "--tenant", "acme")
    assert listing.returncode == 0 and key[:PREFIX_CHARS] in listing.stdout
    assert key[PREFIX_CHARS:] not in listing.stdout
    key_id = kiln.store.list_api_keys(tenant="acme")[0].id
    revoked = run_keys(database_url, tmp_path, "revoke", key_id)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    assert (await kiln.http.get("/v1/jobs", headers=bearer(key))).status_code == 401
    unknown = run_keys(database_url, tmp_path, "revoke", "nosuchkey")
    assert unknown.returncode == 2 and "keys list" in unknown.stderr
    bad = run_keys(database_url, tmp_path, "create", "--tenant", "no spaces/please")
    assert bad.returncode == 2 and "invalid tenant name" in bad.stderr


async def test_auth_off_is_an_explicit_setting(database_url: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KILN_AUTH", raising=False)
    assert Settings().auth == "on"
    monkeypatch.setenv("KILN_AUTH", "bogus")
    with pytest.raises(ValidationError, match="auth"):
        Settings()
    monkeypatch.setenv("KILN_AUTH", "off")
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url)
    assert not settings.auth_enabled
    app = create_app(settings)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://kiln.test") as http:
            files = {"model": ("m.tar.gz", MODEL.read_bytes())}
            resp = await http.post("/v1/compile", files=files)
            assert resp.status_code == 202, resp.text
            assert app.state.services.job_store.get_job(job_id=resp.json()["id"]).tenant == "default"
            assert (await http.get("/v1/jobs")).json()["items"][0]["id"] == resp.json()["id"]
    finally:
        app.state.services.job_store.dispose()


class TestRateLimit:
    @pytest.fixture
    def limits(self) -> dict[str, Any]:
        return {"rate_limit_per_minute": 2, "max_active_jobs_per_tenant": 0}

    async def test_past_the_rate_a_tenant_gets_429_with_retry_after(self, kiln: Kiln) -> None:
        key_a = kiln.store.create_api_key(tenant="a").key
        key_b = kiln.store.create_api_key(tenant="b").key
        assert [(await kiln.submit(key_a)).status_code for _ in range(2)] == [202, 202]
        refused = await kiln.submit(key_a)
        assert refused.status_code == 429, refused.text
        assert refused.json()["code"] == "rate_limited"
        assert 1 <= int(refused.headers["retry-after"]) <= 30
        assert "KILN_RATE_LIMIT_PER_MINUTE" in refused.json()["detail"]
        assert (await kiln.submit(key_b)).status_code == 202  # another tenant has its own bucket
        assert len(kiln.store.list_jobs(tenant="a").items) == 2  # the refused one left nothing


def test_token_bucket_refills_at_the_configured_rate() -> None:
    # The shared buckets' rule (Redis and database alike), on explicit times in microseconds.
    now, tat = 100 * US, None
    for _ in range(2):
        tat, wait = gcra(tat, now, 2)
        assert tat is not None and wait == 0.0
    assert gcra(tat, now, 2) == (None, pytest.approx(30.0))
    assert gcra(tat, now + 15 * US, 2) == (None, pytest.approx(15.0))
    assert gcra(tat, now + 30 * US, 2)[1] == 0.0
    assert gcra(tat, now + 3600 * US, 2) == (3600 * US + now + 30 * US, 0.0)  # full, not more


class TestActiveJobsCap:
    @pytest.fixture
    def limits(self) -> dict[str, Any]:
        return {"rate_limit_per_minute": 0, "max_active_jobs_per_tenant": 2}

    async def test_unfinished_jobs_are_capped_per_tenant(self, kiln: Kiln) -> None:
        key_a = kiln.store.create_api_key(tenant="a").key
        key_b = kiln.store.create_api_key(tenant="b").key
        first, second = [(await kiln.submit(key_a)).json()["id"] for _ in range(2)]
        refused = await kiln.submit(key_a)
        assert refused.status_code == 429, refused.text
        assert refused.json()["code"] == "too_many_active_jobs"
        assert int(refused.headers["retry-after"]) >= 1
        assert "KILN_MAX_ACTIVE_JOBS_PER_TENANT=2" in refused.json()["detail"]
        assert (await kiln.submit(key_b)).status_code == 202
        # A running job counts too; a finished one frees a place.
        assert kiln.store.claim_job(job_id=first, worker_id="w") is not None
        assert (await kiln.submit(key_a)).status_code == 429
        await kiln.http.post(f"/v1/jobs/{second}/cancel", headers=bearer(key_a))
        assert (await kiln.submit(key_a)).status_code == 202


def test_up_creates_a_first_key_file_only_for_an_empty_key_table(
        database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KILN_AUTH", raising=False)
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url)
    lines = _prepare_auth(settings)
    key_file = settings.data_dir / "api-key"
    key = key_file.read_text().strip()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert str(key_file) in "\n".join(lines) and key not in "\n".join(lines)
    assert any("kiln-service keys create --tenant NAME" in line for line in lines)
    store = JobStore(database_url)
    try:
        assert store.authenticate_api_key(key=key) == "default"
        _prepare_auth(settings)
        assert store.count_api_keys() == 1 and key_file.read_text().strip() == key
        off = Settings(data_dir=tmp_path / "off", database_url=database_url, auth="off")
        assert "KILN_AUTH=off" in _prepare_auth(off)[0] and not (off.data_dir / "api-key").exists()
    finally:
        store.dispose()


async def test_sdk_sends_its_key_and_maps_401(kiln: Kiln) -> None:
    key = kiln.store.create_api_key(tenant="a").key
    job_id = (await kiln.submit(key)).json()["id"]
    async with kiln_client.AsyncClient("http://kiln.test", api_key=key, http_client=kiln.http,
                                       max_retries=0) as sdk:
        assert (await sdk.jobs.get(job_id)).id == job_id
    other = kiln.store.create_api_key(tenant="b").key
    async with kiln_client.AsyncClient("http://kiln.test", api_key=other, http_client=kiln.http,
                                       max_retries=0) as sdk:
        with pytest.raises(kiln_client.NotFoundError):
            await sdk.jobs.get(job_id)
    async with kiln_client.AsyncClient("http://kiln.test", api_key=key + "x", http_client=kiln.http,
                                       max_retries=0) as sdk:
        with pytest.raises(kiln_client.AuthenticationError, match="keys create"):
            await sdk.jobs.get(job_id)
