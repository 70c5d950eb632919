"""Fixtures of the service tests: real SavedModels, real stores, a real Celery transport.

* SavedModels are built with TensorFlow once per session, in a subprocess (the test process never
  imports TensorFlow, which lets tests check that the API does not either).
* The job store runs on SQLite in ``tmp_path`` and, for the store tests, on a fresh PostgreSQL
  database ``kiln_test_service_<random>`` created for the session and dropped after.
* Queueing uses a real Celery app on the embedded ``filesystem://`` transport in ``tmp_path``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from service_helpers import make_tar

from _support.postgres import fresh_database
from _support.processes import run_script
from kiln_service import migrations
from kiln_service.config import Settings
from kiln_service.main import create_app
from kiln_service.stores.jobs import JobStore

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the test SavedModels with real TensorFlow (see ``_build_models.py``)."""
    out = tmp_path_factory.mktemp("models")
    run_script(HERE / "_build_models.py", str(out))
    return out


@pytest.fixture(scope="session")
def tf_signatures(models_dir: Path) -> dict[str, Any]:
    """What TensorFlow itself reports for each model's signatures."""
    data: dict[str, Any] = json.loads((models_dir / "signatures.json").read_text())
    return data


@pytest.fixture(scope="session")
def two_inputs_tgz(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two-input SavedModel as .tar.gz, one folder down."""
    return make_tar(models_dir / "two_inputs", tmp_path_factory.mktemp("arch") / "m.tar.gz")


@pytest.fixture(autouse=True)
def _auth_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Route tests run without API keys (explicitly ``KILN_AUTH=off``, also for ``Settings()``
    built inside tests); authentication itself is tested in ``tests/reliability/test_tenants.py``."""
    monkeypatch.setenv("KILN_AUTH", "off")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded settings rooted in ``tmp_path`` (SQLite, filesystem broker, local artifacts),
    with auth explicitly off."""
    return Settings(data_dir=tmp_path / "kiln", auth="off")


@pytest.fixture
def app_settings(settings: Settings) -> Settings:
    """The settings the ``client`` app uses (override in a test module to change caps)."""
    return settings


@pytest.fixture
def app(app_settings: Settings) -> Any:
    """The API with a migrated SQLite store."""
    migrations.upgrade(app_settings.resolved_database_url)
    application = create_app(app_settings)
    yield application
    application.state.services.job_store.dispose()


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client calling the app in-process."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://kiln.test") as c:
        yield c


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for the session, migrated; dropped afterwards."""
    with fresh_database("kiln_test_service") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    """A migrated, empty job store on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
        migrations.upgrade(url)
    else:
        url = request.getfixturevalue("pg_url")
        migrations.upgrade(url)
    job_store = JobStore(url)
    if request.param == "postgresql":
        with job_store.engine.begin() as conn:
            conn.exec_driver_sql("TRUNCATE job_logs, jobs, compile_cache")
    yield job_store
    job_store.dispose()
