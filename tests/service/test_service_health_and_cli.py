"""Health, metrics, OpenAPI, migrations and the ``kiln-service`` command."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from service_helpers import assert_problem, good_inputs, upload_files

from _support.postgres import fresh_database
from kiln_service import migrations
from kiln_service.config import Settings
from kiln_service.main import DatabaseNotMigratedError, create_app, prepare_database


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


async def test_livez_and_readyz(client: httpx.AsyncClient) -> None:
    assert (await client.get("/livez")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"job_store": "ok", "artifact_store": "ok", "broker": "ok"}


async def test_readyz_names_the_broker_when_it_is_down(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "kiln", broker_url="redis://127.0.0.1:1/0")
    migrations.upgrade(settings.resolved_database_url)
    app = create_app(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        body = assert_problem(await c.get("/readyz"), 503, "not_ready")
    assert [e["component"] for e in body["errors"]] == ["broker"]


async def test_readyz_names_an_unmigrated_job_store(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path / "kiln"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        body = assert_problem(await c.get("/readyz"), 503, "not_ready")
    assert [e["component"] for e in body["errors"]] == ["job_store"]


async def test_metrics_count_submissions_outcomes_and_depth(
        client: httpx.AsyncClient, app: Any, two_inputs_tgz: Path) -> None:
    resp = await client.post("/v1/compile", files=upload_files(two_inputs_tgz.read_bytes(), good_inputs()))
    assert resp.status_code == 202
    job_id = resp.json()["id"]
    first = _samples((await client.get("/metrics")).text)
    assert first[("kiln_jobs_submitted_total", (("target", "xla"),))] == 1
    assert first[("kiln_jobs", (("status", "queued"),))] == 1
    store = app.state.services.job_store
    claimed = store.claim_job(job_id=job_id, worker_id="w")
    store.finish_job(job_id=job_id, status="succeeded", fence=claimed.fence)
    second = _samples((await client.get("/metrics")).text)
    assert second[("kiln_jobs", (("status", "queued"),))] == 0
    assert second[("kiln_jobs", (("status", "succeeded"),))] == 1
    assert second[("kiln_jobs_finished_total", (("status", "succeeded"), ("target", "xla")))] == 1
    assert second[("kiln_job_duration_seconds_count", (("target", "xla"),))] == 1
    assert second[("kiln_job_queue_wait_seconds_count", (("target", "xla"),))] == 1
    third = _samples((await client.get("/metrics")).text)  # not counted twice
    assert third[("kiln_jobs_finished_total", (("status", "succeeded"), ("target", "xla")))] == 1


async def test_openapi_documents_the_api(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert {"/v1/compile", "/v1/jobs", "/v1/jobs/{job_id}/logs",
            "/v1/jobs/{job_id}/artifacts/{name}", "/readyz"} <= set(spec["paths"])
    body = spec["paths"]["/v1/compile"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert "model" in body["schema"]["properties"]
    assert (await client.get("/docs")).status_code == 200


def test_sqlite_is_auto_migrated_but_postgres_is_refused_until_migrated(
        tmp_path: Path, fresh_pg: str) -> None:
    sqlite = Settings(data_dir=tmp_path / "kiln")
    prepare_database(sqlite)
    assert migrations.is_up_to_date(sqlite.resolved_database_url)
    fresh = fresh_pg
    with pytest.raises(DatabaseNotMigratedError, match="kiln-service migrate"):
        prepare_database(Settings(data_dir=tmp_path / "k2", database_url=fresh))


@pytest.fixture
def fresh_pg() -> Iterator[str]:
    """An empty, unmigrated PostgreSQL database, dropped afterwards."""
    with fresh_database("kiln_test_service_cli") as url:
        yield url


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kiln_service.cli", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120, cwd="/")


def test_cli_migrate_then_serve_check_on_postgres(tmp_path: Path, fresh_pg: str) -> None:
    fresh = fresh_pg
    env = {"KILN_DATABASE_URL": fresh, "KILN_DATA_DIR": str(tmp_path / "kiln")}
    refused = _cli("serve", "--port", "1", env=env)
    assert refused.returncode == 2 and "kiln-service migrate" in refused.stderr
    done = _cli("migrate", env=env)
    assert done.returncode == 0, done.stderr
    assert migrations.head_revision() in done.stdout
    assert migrations.is_up_to_date(fresh)


def test_migrate_works_from_the_built_wheel(tmp_path: Path) -> None:
    import shutil
    import zipfile

    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is needed to build the wheel")
    repo = Path(__file__).resolve().parents[2]
    built = subprocess.run([uv, "build", "--package", "kiln-service", "--wheel", "-o", str(tmp_path / "dist")],
                           cwd=repo, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("kiln_service-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    db = tmp_path / "wheel.db"
    env = {"PYTHONPATH": str(site), "KILN_DATABASE_URL": f"sqlite:///{db}",
           "KILN_DATA_DIR": str(tmp_path / "kiln")}
    where = _cli_code("import kiln_service; print(kiln_service.__file__)", env=env)
    assert where.stdout.strip().startswith(str(site)), where.stdout
    done = _cli("migrate", env=env)
    assert done.returncode == 0, done.stderr
    assert migrations.current_revision(f"sqlite:///{db}") == migrations.head_revision()


def _cli_code(code: str, *, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120, cwd="/")
