"""What ``import kiln_client`` exposes and what it must not load."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

import kiln_client
from kiln_client import cli

REPO = Path(__file__).resolve().parents[2]


def test_import_loads_no_tensorflow_fastapi_or_celery() -> None:
    code = (
        "import sys, kiln_client, kiln_client.cli\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'tf_keras', 'fastapi', 'celery', 'kiln_service', 'kiln_worker')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_worker_loads_no_api_or_optional_store_package() -> None:
    # kiln-worker does not depend on FastAPI (kiln-service's api extra), and the embedded
    # default needs no Redis, PostgreSQL or S3 client: importing the worker loads none of them.
    code = (
        "import sys, kiln_worker.cli, kiln_worker.tasks, kiln_worker.celery_app, "
        "kiln_worker.runner, kiln_service.reconcile, kiln_service.tracing\n"
        "heavy = [m for m in ('fastapi', 'starlette', 'uvicorn', 'jinja2', 'python_multipart',"
        " 'prometheus_client', 'redis', 'psycopg', 'boto3', 'botocore', 'tensorflow')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_exported_members() -> None:
    for name in kiln_client.__all__:
        assert hasattr(kiln_client, name), name
        member = getattr(kiln_client, name)
        if hasattr(member, "__module__") and not isinstance(member, str):
            # Public names are defined in kiln_client's own modules and re-exported once.
            assert member.__module__.startswith("kiln_client"), name
    assert sorted(kiln_client.__all__) == kiln_client.__all__ or set(kiln_client.__all__) == set(
        sorted(kiln_client.__all__)
    )
    for name in ("Client", "AsyncClient", "Job", "AsyncJob", "JobFailed", "KilnError", "parse_flags"):
        assert name in kiln_client.__all__


def test_sync_and_async_surfaces_match() -> None:
    def public(cls: type) -> set[str]:
        return {n for n in dir(cls) if not n.startswith("_")}

    assert public(kiln_client.Client) - {"close"} == public(kiln_client.AsyncClient) - {"close"}
    assert public(kiln_client.Jobs) == public(kiln_client.AsyncJobs)
    assert public(kiln_client.Job) == public(kiln_client.AsyncJob)


def test_env_fallbacks_and_key_never_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_URL", "http://from-env:9000/v1/")
    monkeypatch.setenv("KILN_API_KEY", "sk-secret")
    client = kiln_client.Client()
    assert client.base_url == "http://from-env:9000"
    assert client._headers(None)["Authorization"] == "Bearer sk-secret"
    assert "sk-secret" not in repr(client)
    other = client.with_options(max_retries=0, api_key="sk-other")
    assert other.max_retries == 0 and other._headers(None)["Authorization"] == "Bearer sk-other"
    assert client.max_retries != 0 and other._http is client._http
    monkeypatch.delenv("KILN_API_KEY")
    assert "Authorization" not in kiln_client.Client("http://x")._headers(None)


def _project(member: str) -> dict[str, Any]:
    with (REPO / member / "pyproject.toml").open("rb") as f:
        project: dict[str, Any] = tomllib.load(f)["project"]
    return project


def test_workspace_versions_move_together_and_pins_require_them(
        capsys: pytest.CaptureFixture[str]) -> None:
    # The three packages are released together: one version, and each pin on a sibling asks for
    # at least its current minor, so an older kiln-client cannot satisfy a newer kiln-service.
    version = _project("client")["version"]
    assert {_project(m)["version"] for m in ("service", "worker", ".")} == {version}
    assert kiln_client.__version__ == version
    current = Version(version)
    for member in ("service", "worker"):
        deps = [Requirement(str(d)) for d in _project(member)["dependencies"]]
        siblings = [r for r in deps if r.name.startswith("kiln-")]
        assert siblings, member
        for req in siblings:
            floor = re.fullmatch(r">=(\d+)\.(\d+)", str(req.specifier))
            assert floor, (member, str(req))
            assert (int(floor[1]), int(floor[2])) == (current.major, current.minor), (member, str(req))
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"kiln {version}"
