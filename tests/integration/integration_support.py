"""Helpers of the integration tests: real processes (API, worker), HTTP calls, checks."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from _support.processes import BIN, Proc, free_port, quiet_env, runner_pids, start, wait_ready

__all__ = ["BIN", "TERMINAL", "ZOO_SCRIPT", "Proc", "Stack", "base_env", "check_compiled",
           "free_port", "runner_pids", "start", "tar_names", "wait_ready"]

ROOT = Path(__file__).resolve().parents[2]
ZOO_SCRIPT = ROOT / "tests" / "worker" / "model_zoo.py"
TERMINAL = ("succeeded", "failed", "cancelled")

CHECK_SCRIPT = """
import json, sys, tarfile, glob
import numpy as np, tensorflow as tf
archive, original_dir, npz, out, shape_only = sys.argv[1:6]
shape_only = set(filter(None, shape_only.split(",")))
tarfile.open(archive).extractall(out, filter="data")
compiled_dir = glob.glob(out + "/**/saved_model.pb", recursive=True)[0].rsplit("/", 1)[0]
inputs = {k: tf.constant(v) for k, v in np.load(npz).items()}
want = tf.saved_model.load(original_dir).signatures["serving_default"](**inputs)
got = tf.saved_model.load(compiled_dir).signatures["serving_default"](**inputs)
shapes_equal = [want[k].shape for k in sorted(want)] == [got[k].shape for k in sorted(got)]
want = [want[k].numpy() for k in sorted(want) if k not in shape_only]
got = [got[k].numpy() for k in sorted(got) if k not in shape_only]
print(json.dumps({"shapes_equal": shapes_equal,
                  "max_abs_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(want, got)),
                  "max_abs_output": max(float(np.max(np.abs(a))) for a in want)}))
"""


def base_env(**overrides: str) -> dict[str, str]:
    """This environment without KILN_* settings, with TensorFlow quiet, plus ``overrides``."""
    # These tests are about compiling, not tenants: auth is turned off explicitly (it is tested
    # in tests/reliability/test_tenants.py and, with `up`'s first key, in tests/client).
    return quiet_env(**{"KILN_AUTH": "off", **overrides})


@dataclass
class Stack:
    """A running Kiln: API URL and the processes behind it."""

    url: str
    procs: list[Proc]
    data_dir: Path
    database_url: str = ""
    """The job store the stack runs on (empty: the embedded default under ``data_dir``)."""
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def submit(self, model: Path, npz: Path | None = None, **fields: Any) -> dict[str, Any]:
        """POST /v1/compile; returns the job (asserts 202)."""
        files = {"model": ("model.tar.gz", model.read_bytes(), "application/gzip")}
        if npz is not None:
            files["example_inputs"] = ("inputs.npz", npz.read_bytes(), "application/octet-stream")
        data = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
        resp = self.client.post("/v1/compile", files=files, data=data)
        assert resp.status_code == 202, resp.text
        assert resp.headers["location"].endswith(resp.json()["id"])
        job: dict[str, Any] = resp.json()
        return job

    def job(self, job_id: str) -> dict[str, Any]:
        """GET /v1/jobs/{id}."""
        resp = self.client.get(f"/v1/jobs/{job_id}")
        resp.raise_for_status()
        job: dict[str, Any] = resp.json()
        return job

    def wait(self, job_id: str, timeout: float = 300.0, until: tuple[str, ...] = TERMINAL
             ) -> dict[str, Any]:
        """Poll the job until its status is in ``until``; fail with the logs on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["status"] in until:
                return job
            time.sleep(0.3)
        logs = self.client.get(f"/v1/jobs/{job_id}/logs").text[-3000:]
        workers = "\n".join(p.tail() for p in self.procs)
        raise AssertionError(f"job {job_id} still {job['status']}:\n{logs}\n{workers}")

    def download(self, job_id: str, name: str, dest: Path) -> Path:
        """Download an artifact with its sha256 header checked against the job's record."""
        resp = self.client.get(f"/v1/jobs/{job_id}/artifacts/{name}")
        resp.raise_for_status()
        dest.write_bytes(resp.content)
        return dest

    def close(self) -> None:
        """Stop every process, the worker first (it may be mid-job)."""
        self.client.close()
        for proc in reversed(self.procs):
            proc.stop()


def check_compiled(archive: Path, original_dir: Path, npz: Path, work: Path,
                   shape_only: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load the compiled and original SavedModels in a fresh interpreter and compare outputs
    (those named in ``shape_only``, random draws, by their shapes alone)."""
    work.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-c", CHECK_SCRIPT, str(archive), str(original_dir), str(npz), str(work),
         ",".join(shape_only)],
        capture_output=True, text=True, env=base_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def tar_names(path: Path) -> list[str]:
    """Member names of a tar archive."""
    with tarfile.open(path) as tar:
        return tar.getnames()
