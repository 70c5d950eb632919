"""The compile sandbox on whole stacks: the embedded default, and Redis + PostgreSQL.

``kiln-service serve`` and ``kiln-worker`` run as in production. The escaping models of
``_build_sandbox_models.py`` hide their reads and writes in a serialised tf.data graph, but the op
scan refuses ``DatasetFromGraph`` at upload, so each job is submitted with a model the scan
accepts and its stored upload is then replaced by the escaping one before a worker starts (the
model the scan missed, for real). The worker and the API carry a secret in their environments;
the data dir holds ``api-key`` and other secrets, the work dir another job's folder. Also: the
worker refuses to start without bubblewrap unless ``KILN_WORKER_SANDBOX=none``, and ``/readyz``
says which mode is in force.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from _support.postgres import fresh_database

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from fault_support import wait_for
from integration_support import (
    BIN,
    TERMINAL,
    Proc,
    Stack,
    base_env,
    free_port,
    start,
    wait_ready,
)
from test_sandbox import TOKEN, build, plant_secrets, read_paths

HERE = Path(__file__).resolve().parent
REDIS_URL = os.environ.get("KILN_TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/") + "/7"

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="a root worker's sandbox")]


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="kiln-sandbox-stacks-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    with fresh_database("kiln_test_sandbox") as url:
        yield url


def stack_env(root: Path, kind: str, pg_url: str) -> dict[str, str]:
    base = root / kind
    env = base_env(KILN_DATA_DIR=str(base / "data"), KILN_WORKER_WORK_DIR=str(base / "work"),
                   KILN_TEST_SECRET=f"SECRET-env-{TOKEN}", KILN_WORKER_ADVERTISE_SECONDS="1",
                   KILN_WORKER_POLL_SECONDS="0.3", KILN_WORKER_LOG_FLUSH_SECONDS="0.3")
    if kind == "redis_postgresql":
        env.update(KILN_DATABASE_URL=pg_url, KILN_BROKER_URL=REDIS_URL,
                   KILN_STORAGE_URL=f"file://{base / 'store'}")
    return env


def store_root(env: dict[str, str]) -> Path:
    url = env.get("KILN_STORAGE_URL", f"file://{env['KILN_DATA_DIR']}/artifacts")
    return Path(url.removeprefix("file://"))


@pytest.fixture(scope="module")
def models(root: Path, pg_database: str) -> Path:
    """One build for both stacks: the reader tries every secret of both."""
    read: list[str] = []
    globs = ["/proc/*/environ"]
    writes: list[str] = []
    for kind in ("embedded", "redis_postgresql"):
        env = stack_env(root, kind, pg_database)
        data, work = Path(env["KILN_DATA_DIR"]), Path(env["KILN_WORKER_WORK_DIR"])
        places = plant_secrets(data, work)
        secret_in_store = store_root(env) / "jobs" / "other" / "secret.txt"
        secret_in_store.parent.mkdir(parents=True, exist_ok=True)
        secret_in_store.write_text(f"SECRET-store-{TOKEN}\n")
        read += [*(str(p) for p in places.values()), str(secret_in_store),
                 str(data / "kiln.db")]
        globs.append(f"{work}/kiln-job-*/*/*")
        writes.append(str(data / f"escaped-{TOKEN}.txt"))
    spec = root / "spec.json"
    spec.write_text(json.dumps({"read": [*read, "/etc/shadow", "/proc/1/environ"],
                                "globs": globs, "write": [*writes, f"/tmp/escaped-{TOKEN}"]}))
    return build(str(HERE / "_build_sandbox_models.py"), root / "models", str(spec))


def swap_upload(env: dict[str, str], job_id: str, model: Path) -> None:
    """Replace a queued job's stored model: the escaping model the scan did not see."""
    target = store_root(env) / "jobs" / job_id / "upload" / "model"
    assert target.is_file(), target
    shutil.copyfile(model, target)


def start_worker(env: dict[str, str], logs: Path, name: str = "worker") -> Proc:
    worker = start(name, [str(BIN / "kiln-worker"), "--targets", "xla"], env, logs)
    wait_for(lambda: "ready" in worker.log.read_text(errors="replace")
             or worker.popen.poll() is not None, "the worker to be ready", timeout=120)
    assert worker.popen.poll() is None, worker.tail()
    return worker


@pytest.mark.parametrize("kind", ["embedded", "redis_postgresql"])
def test_models_escaping_the_op_scan_get_nothing(kind: str, root: Path, models: Path,
                                                  pg_database: str) -> None:
    env = stack_env(root, kind, pg_database)
    logs = root / kind / "logs"
    if kind == "redis_postgresql":
        import redis

        redis.Redis.from_url(REDIS_URL).flushdb()
        migrate = subprocess.run([str(BIN / "kiln-service"), "migrate"], env=env,
                                 capture_output=True, text=True, timeout=120)
        assert migrate.returncode == 0, migrate.stderr
    port = free_port()
    api = start("api", [str(BIN / "kiln-service"), "serve", "--port", str(port)], env, logs)
    stack = Stack(f"http://127.0.0.1:{port}", [api], root / kind)
    try:
        wait_ready(stack.url, [api])
        assert stack.client.get("/readyz").json()["sandbox"] is None  # no worker yet
        jobs = {}
        for name in ("reader", "writer"):  # submitted as the plain model, which the scan accepts
            jobs[name] = stack.submit(models / "plain" / "model.tar.gz",
                                      models / "plain" / "example_inputs.npz")["id"]
            swap_upload(env, jobs[name], models / name / "model.tar.gz")
        worker = start_worker(env, logs)
        stack.procs.append(worker)
        done = {name: stack.wait(job_id, timeout=600, until=TERMINAL)
                for name, job_id in jobs.items()}
        ready = stack.client.get("/readyz").json()
        reader_log = stack.client.get(f"/v1/jobs/{jobs['reader']}/logs").text
        got = read_paths(reader_log)
        print(f"\n{kind}: /readyz sandbox={ready['sandbox']}; reader {done['reader']['status']}"
              f", read only {sorted(got)}; writer {done['writer']['status']} "
              f"{done['writer']['failure']}")
        assert ready["sandbox"] == "bubblewrap" and set(ready["sandbox_workers"].values()) == \
            {"bubblewrap"}
        assert "compile isolation: bubblewrap" in worker.log.read_text(errors="replace")
        assert TOKEN not in reader_log and TOKEN not in json.dumps(done["reader"])
        for path in got:  # only its own PID namespace and its own job folder
            assert path.startswith(("/proc/", str(root / kind / "work"))), path
        assert "/etc/shadow" not in got
        writer = done["writer"]
        assert writer["status"] == "failed" and writer["attempts"] == 1
        assert writer["failure"]["kind"] == "client_error"
        assert not list(root.glob(f"*/data/escaped-{TOKEN}.txt"))
        assert not Path(f"/tmp/escaped-{TOKEN}").exists()
    finally:
        stack.close()


def test_worker_refuses_to_start_without_a_sandbox_unless_allowed(root: Path,
                                                                  pg_database: str) -> None:
    env = stack_env(root, "embedded", pg_database)
    env["PATH"] = str(BIN)  # the venv's bin: no bwrap on this PATH
    refused = subprocess.run([str(BIN / "kiln-worker"), "--targets", "xla"], env=env,
                             capture_output=True, text=True, timeout=120)
    print(f"\nno bubblewrap: exit {refused.returncode}: {refused.stderr.strip()[-300:]}")
    assert refused.returncode == 3
    assert "bubblewrap" in refused.stderr and "KILN_WORKER_SANDBOX=none" in refused.stderr
    port = free_port()
    logs = root / "refuse" / "logs"
    api = start("api", [str(BIN / "kiln-service"), "serve", "--port", str(port)], env, logs)
    worker = None
    try:
        wait_ready(f"http://127.0.0.1:{port}", [api])
        worker = start_worker({**env, "KILN_WORKER_SANDBOX": "none"}, logs, "worker-none")
        assert "compile isolation: none" in worker.log.read_text(errors="replace")

        def readyz() -> dict[str, Any] | None:
            body: dict[str, Any] = httpx.get(f"http://127.0.0.1:{port}/readyz").json()
            return body if body.get("sandbox") else None

        body = wait_for(readyz, "/readyz to list the worker", timeout=30)
        assert body["sandbox"] == "none", body
    finally:
        for proc in (worker, api):
            if proc is not None:
                proc.stop()
