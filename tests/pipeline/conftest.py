"""Fixtures of the pipeline tests (webhooks, live events, logs, metrics, traces): real processes
on loopback, a real SavedModel built once in a subprocess (the test process never imports TF)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from otlp_support import otlp_receiver, wait_for_spans
from pipeline_support import (
    BIN,
    CALLER_SPAN,
    CALLER_TRACE,
    ROOT,
    TF_ENV,
    WEBHOOK_SECRET,
    Api,
    JobRun,
    api_env,
    free_port,
    wait_finished,
)

from _support.postgres import fresh_database


@pytest.fixture(scope="session")
def model_tgz(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A small Keras SavedModel (input ``x``: float32 [batch, 3]) as .tar.gz bytes."""
    out = tmp_path_factory.mktemp("model") / "m"
    code = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
            "from model_factory import save_model; save_model(Path(sys.argv[2]), seed=3)")
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT / "tests" / "client"), str(out)],
                          env={**os.environ, **TF_ENV}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(out, arcname="model")
    return buf.getvalue()


@pytest.fixture(scope="session")
def inputs_npz() -> bytes:
    """Example inputs for ``model_tgz``."""
    buf = io.BytesIO()
    np.savez(buf, x=np.ones((1, 3), np.float32))
    return buf.getvalue()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """``kiln-service serve`` on SQLite, webhooks to loopback allowed, fast retries (one per module)."""
    tmp_path = tmp_path_factory.mktemp("api")
    env = api_env(tmp_path / "kiln", KILN_WEBHOOK_ALLOW_PRIVATE_URLS="true",
                  KILN_WEBHOOK_RETRY_BASE_SECONDS="0.2", KILN_WEBHOOK_GIVE_UP_SECONDS="8")
    server = Api(f"http://127.0.0.1:{free_port()}", env, tmp_path / "api.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database ``kiln_test_pipe_<random>`` (dropped afterwards)."""
    with fresh_database("kiln_test_pipe") as url:
        yield url


@pytest.fixture(scope="session")
def job_run(tmp_path_factory: pytest.TempPathFactory, model_tgz: bytes, inputs_npz: bytes
            ) -> Iterator[JobRun]:
    """One real compile, shared by the log and trace tests: ``kiln-service serve`` and
    ``kiln-worker`` (Redis broker, SQLite, auth on, ``KILN_LOG_FORMAT=json``,
    ``KILN_TRACING=otlp`` to a receiver on loopback), the request carrying a caller's
    ``traceparent`` and a job webhook with its own secret."""
    import redis

    tmp_path = tmp_path_factory.mktemp("job_run")
    redis_url = os.environ.get("KILN_TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/") + "/6"
    redis.Redis.from_url(redis_url).flushdb()
    with otlp_receiver() as traces:
        env = api_env(tmp_path / "kiln", KILN_AUTH="on", KILN_LOG_FORMAT="json",
                      KILN_BROKER_URL=redis_url, KILN_WORKER_LOG_FLUSH_SECONDS="0.2",
                      KILN_TRACING="otlp", KILN_WEBHOOK_ALLOW_PRIVATE_URLS="true",
                      OTEL_EXPORTER_OTLP_ENDPOINT=traces.url, OTEL_BSP_SCHEDULE_DELAY="100",
                      **TF_ENV)
        env.pop("OTEL_SERVICE_NAME", None)
        made = subprocess.run([str(BIN / "kiln-service"), "keys", "create", "--tenant", "acme"],
                              env=env, capture_output=True, text=True, timeout=120, check=True)
        key = made.stdout.split()[-1]
        api = Api(f"http://127.0.0.1:{free_port()}", env, tmp_path / "api.log")
        worker_log = tmp_path / "worker.log"
        with open(worker_log, "ab") as out:
            worker = subprocess.Popen([str(BIN / "kiln-worker"), "--targets", "xla"], env=env,
                                      stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            api.start()
            auth = {"Authorization": f"Bearer {key}"}
            refused = httpx.get(f"{api.url}/v1/jobs", headers={"Authorization": f"Bearer {key}x"})
            assert refused.status_code == 401
            r = httpx.post(f"{api.url}/v1/compile", timeout=60, headers={
                **auth, "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}, files={
                "model": ("m.tgz", model_tgz), "example_inputs": ("x.npz", inputs_npz)}, data={
                "webhook_url": f"{traces.url}/hook", "webhook_secret": WEBHOOK_SECRET})
            assert r.status_code == 202, r.text
            job_id = str(r.json()["id"])
            job = wait_finished(api.url, job_id, auth)
            assert job["status"] == "succeeded", job
            job_log = httpx.get(f"{api.url}/v1/jobs/{job_id}/logs", headers=auth).text
            wait_for_spans(traces, lambda names: {"kiln.compile", "POST /v1/compile"} <= names)
        finally:
            api.stop()
            worker.terminate()
            worker.wait(timeout=30)
        yield JobRun(job_id, key, api.log, worker_log, job_log, traces)
