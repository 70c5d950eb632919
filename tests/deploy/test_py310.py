"""The worker's non-TensorFlow code (task, storage, job store) under Python 3.10.

The Inf1 worker image runs Kiln on Python 3.10 (tensorflow-neuron's last release supports no
newer Python), so client, service and worker sources must compile there, and the task, the
artifact stores and the job store must run there. A venv is built with Python 3.10 (no
TensorFlow), then a real compile task runs in it: a job in PostgreSQL whose upload sits in the S3
server is claimed, fetched and failed with the reason a person can act on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_support import REPO, S3_ENV

from _support.postgres import fresh_database

PY310_CANDIDATES = (
    os.environ.get("KILN_TEST_PYTHON310", ""),
    "/root/.pyenv/versions/3.10.13/bin/python",
    shutil.which("python3.10") or "",
)
SOURCES = ("client", "service", "worker")


def find_python310() -> str | None:
    for candidate in PY310_CANDIDATES:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="session")
def python310() -> str:
    found = find_python310()
    if found is None:
        pytest.skip("Python 3.10 not found (set KILN_TEST_PYTHON310 or install python3.10); CI has it")
    version = subprocess.run([found, "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version == "(3, 10)", f"{found} is not Python 3.10 but {version}"
    return found


@pytest.fixture(scope="session")
def venv310(python310: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Python 3.10 venv with kiln-client, kiln-service and kiln-worker (--no-deps), no TensorFlow."""
    venv = tmp_path_factory.mktemp("py310") / "venv"
    subprocess.run([python310, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    # The machine's pip configuration (index, find-links, certificates) applies as usual.
    # The service with the stores an Inf1 worker talks to, as docker/worker-inf1.Dockerfile has it.
    run = subprocess.run([*pip, str(REPO / "client"), f"{REPO / 'service'}[redis,postgres,s3]"],
                         capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, f"pip install of client and service failed:\n{run.stderr[-4000:]}"
    # The worker without its TensorFlow requirements, as in docker/worker-inf1.Dockerfile.
    run = subprocess.run([*pip, "--no-deps", str(REPO / "worker")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"pip install --no-deps of the worker failed:\n{run.stderr[-4000:]}"
    return venv


def test_sources_compile_under_python310(python310: str, tmp_path: Path) -> None:
    # PYTHONPYCACHEPREFIX keeps the .pyc files out of the source tree.
    env = {**os.environ, "PYTHONPYCACHEPREFIX": str(tmp_path / "pycache")}
    result = subprocess.run(
        [python310, "-m", "compileall", "-q", *[str(REPO / s) for s in SOURCES]],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, f"Python 3.10 cannot compile Kiln's sources:\n{result.stdout}{result.stderr}"
    compiled = list((tmp_path / "pycache").rglob("*.cpython-310.pyc"))
    assert len(compiled) > 20, "compileall compiled suspiciously few files"


@pytest.mark.slow  # builds a venv (~30 s)
def test_imports_without_tensorflow_under_python310(venv310: Path) -> None:
    script = textwrap.dedent("""
        import json, sys
        import kiln_client, kiln_client.models
        import kiln_service.stores.artifacts, kiln_service.stores.jobs, kiln_service.stores.s3
        import kiln_worker.tasks, kiln_worker.celery_app, kiln_worker.cli
        print(json.dumps({"version": list(sys.version_info[:2]),
                          "tf": "tensorflow" in sys.modules,
                          "worker": kiln_worker.tasks.__file__}))
    """)
    result = subprocess.run([str(venv310 / "bin" / "python"), "-c", script],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["version"] == [3, 10]
    assert report["tf"] is False, "importing the task module must not load TensorFlow"
    assert "site-packages" in report["worker"], "must run the installed package, not the checkout"


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database on 127.0.0.1:5432, dropped afterwards."""
    with fresh_database("kiln_deploy_py310") as url:
        yield url


TASK_SCRIPT = textwrap.dedent("""
    import json, sys
    from kiln_service.config import Settings
    from kiln_service.migrations import upgrade
    from kiln_service.stores.artifacts import upload_key
    from kiln_service.stores.jobs import JobStore
    from kiln_service.stores.s3 import S3ArtifactStore
    from kiln_worker._compile_job import run_compile_job
    from kiln_worker._context import WorkerContext
    from kiln_worker.config import WorkerSettings

    db_url, bucket = sys.argv[1], sys.argv[2]
    upgrade(db_url)
    jobs = JobStore(db_url)
    store = S3ArtifactStore.from_url("s3://" + bucket + "/py310?addressing_style=path")
    job = jobs.create_job(target="xla", timeout_seconds=60, input_digests={})
    size, sha = store.put_stream(upload_key(job.id, "model"), [b"this is not a SavedModel archive"])
    ctx = WorkerContext(settings=Settings(database_url=db_url), options=WorkerSettings(),
                        jobs=jobs, artifacts=store)
    result = run_compile_job(ctx, job.id)
    again = run_compile_job(ctx, job.id)
    final = jobs.get_job(job_id=job.id)
    print(json.dumps({"result": result, "again": again, "status": str(final.status.value),
                      "failure": final.failure.model_dump(mode="json") if final.failure else None,
                      "keys": store.list_prefix("jobs/" + job.id + "/"),
                      "tf": "tensorflow" in sys.modules}))
""")


@pytest.mark.slow  # builds a venv (~30 s)
def test_compile_task_runs_under_python310(
    venv310: Path, pg_database: str, s3_client: object, bucket: str, moto_endpoint: str
) -> None:
    env = {**os.environ, **S3_ENV, "AWS_ENDPOINT_URL": moto_endpoint}
    result = subprocess.run(
        [str(venv310 / "bin" / "python"), "-c", TASK_SCRIPT, pg_database, bucket],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["result"]["status"] == "failed"
    assert out["again"]["status"] == "skipped", "a finished job must not run twice"
    assert out["status"] == "failed"
    assert out["failure"]["kind"] == "client_error", out["failure"]
    assert out["failure"]["message"], "the failure must say what is wrong"
    assert out["tf"] is False
    assert any(k.endswith("/upload/model") for k in out["keys"])
