"""JSON logs across the API, the worker and the compile process of one real job; no API key in any.

The shared ``job_run`` (``conftest.py``): a real ``kiln-service serve`` and ``kiln-worker`` (Redis
broker, SQLite job store, auth on) compile a small SavedModel with ``KILN_LOG_FORMAT=json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pipeline_support import WEBHOOK_SECRET, JobRun

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


def test_one_jobs_life_is_json_with_its_id_and_no_key(job_run: JobRun) -> None:
    job_id, key, job_log = job_run.job_id, job_run.key, job_run.job_log
    records = {"api": _json_lines(job_run.api_log), "worker": _json_lines(job_run.worker_log)}
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
    everything = job_run.api_log.read_text() + job_run.worker_log.read_text() + job_log
    assert key not in everything and key[12:30] not in everything
    assert WEBHOOK_SECRET[6:] not in everything
