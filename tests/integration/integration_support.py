"""Helpers of the integration tests: real processes (API, worker), HTTP calls, checks."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ZOO_SCRIPT = ROOT / "tests" / "worker" / "model_zoo.py"
TERMINAL = ("succeeded", "failed", "cancelled")

CHECK_SCRIPT = """
import json, sys, tarfile, glob
import numpy as np, tensorflow as tf
archive, original_dir, npz, out = sys.argv[1:5]
tarfile.open(archive).extractall(out, filter="data")
compiled_dir = glob.glob(out + "/**/saved_model.pb", recursive=True)[0].rsplit("/", 1)[0]
inputs = {k: tf.constant(v) for k, v in np.load(npz).items()}
want = tf.saved_model.load(original_dir).signatures["serving_default"](**inputs)
got = tf.saved_model.load(compiled_dir).signatures["serving_default"](**inputs)
want = [want[k].numpy() for k in sorted(want)]
got = [got[k].numpy() for k in sorted(got)]
print(json.dumps({"shapes_equal": [a.shape for a in want] == [b.shape for b in got],
                  "max_abs_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(want, got)),
                  "max_abs_output": max(float(np.max(np.abs(a))) for a in want)}))
"""


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env(**overrides: str) -> dict[str, str]:
    """This environment without KILN_* settings, with TensorFlow quiet, plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    env.update(TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    # These tests are about compiling, not tenants: auth is turned off explicitly (it is tested
    # in tests/reliability/test_tenants.py and, with `up`'s first key, in tests/client).
    env.update(KILN_AUTH="off")
    env.update(overrides)
    return env


@dataclass
class Proc:
    """A process this test session started (in its own session), with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM, then SIGKILL of its whole process group after ``grace`` seconds."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()

    def tail(self, lines: int = 40) -> str:
        """The end of its log, for failure messages."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def start(name: str, argv: list[str], env: Mapping[str, str], logs: Path) -> Proc:
    """Start ``argv`` in a new session with output to ``logs/<name>.log``."""
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    with open(log, "ab") as out:
        popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, env=dict(env), start_new_session=True)
    return Proc(name, popen, log)


def wait_ready(url: str, procs: list[Proc], timeout: float = 120.0) -> None:
    """Wait for ``/readyz`` to answer 200; fail with the logs if a process dies first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.tail()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError("the API never became ready:\n" + "\n".join(p.tail() for p in procs))


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


def check_compiled(archive: Path, original_dir: Path, npz: Path, work: Path) -> dict[str, Any]:
    """Load the compiled and original SavedModels in a fresh interpreter and compare outputs."""
    work.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-c", CHECK_SCRIPT, str(archive), str(original_dir), str(npz), str(work)],
        capture_output=True, text=True, env=base_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def tar_names(path: Path) -> list[str]:
    """Member names of a tar archive."""
    with tarfile.open(path) as tar:
        return tar.getnames()


def runner_pids(job_id: str) -> list[int]:
    """Live compile children of ``job_id`` on this machine (their spec path holds the id)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if "kiln_worker.runner" in cmdline and job_id in cmdline and state != "Z":
            pids.append(int(proc.name))
    return pids
