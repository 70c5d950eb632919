"""JSON logs across the API, the worker and the compile process of one real job; no API key in any.

A real ``kiln-service serve`` and ``kiln-worker`` (Redis broker, SQLite job store, auth on) compile
a small SavedModel with ``KILN_LOG_FORMAT=json``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from pipeline_support import BIN, Api, api_env, free_port, wait_finished

REDIS_URL = os.environ.get("KILN_TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/") + "/6"
pytestmark = pytest.mark.integration


def _json_lines(path: Path) -> list[dict[str, Any]]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"{path.name}: not a JSON line: {line!r}")
    return parsed


def test_one_jobs_life_is_json_with_its_id_and_no_key(
    tmp_path: Path, model_tgz: bytes, inputs_npz: bytes
) -> None:
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    env = api_env(tmp_path / "kiln", KILN_AUTH="on", KILN_LOG_FORMAT="json",
                  KILN_BROKER_URL=REDIS_URL, KILN_WORKER_LOG_FLUSH_SECONDS="0.2",
                  TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    made = subprocess.run([str(BIN / "kiln-service"), "keys", "create", "--tenant", "acme"],
                          env=env, capture_output=True, text=True, timeout=120, check=True)
    key = made.stdout.split()[-1]
    assert key.startswith("kiln_")
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
        r = httpx.post(f"{api.url}/v1/compile", headers=auth, timeout=60,
                       files={"model": ("m.tgz", model_tgz), "example_inputs": ("x.npz", inputs_npz)})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        job = wait_finished(api.url, job_id, auth)
        assert job["status"] == "succeeded", job
        job_log = httpx.get(f"{api.url}/v1/jobs/{job_id}/logs", headers=auth).text
    finally:
        api.stop()
        worker.terminate()
        worker.wait(timeout=30)

    records = {"api": _json_lines(api.log), "worker": _json_lines(worker_log)}
    compile_lines = [json.loads(line) for line in job_log.splitlines() if line.startswith("{")]
    records["compile"] = compile_lines
    for service, lines in records.items():
        about_job = [rec for rec in lines if job_id in rec["message"] or rec.get("job_id") == job_id]
        assert about_job, f"no {service} line about the job"
        for rec in about_job:
            assert rec.get("job_id") == job_id, (service, rec)
    assert {rec["service"] for rec in compile_lines} == {"compile"}
    assert all(rec.get("attempt") == 1 for rec in compile_lines)
    assert any(rec.get("tenant") == "acme" and rec.get("request_id") for rec in records["api"]
               if rec.get("job_id") == job_id)
    assert any(rec.get("attempt") == 1 for rec in records["worker"] if rec.get("job_id") == job_id)
    everything = api.log.read_text() + worker_log.read_text() + job_log
    assert key not in everything and key[12:30] not in everything
