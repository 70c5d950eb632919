"""A Kiln service started for a benchmark, and the client side of a timed submission.

Shared by ``bench/service_overhead.py`` and ``bench/compile_cache.py`` (run as scripts, so
``bench/`` is on ``sys.path``). Importing it sets the TensorFlow environment the services'
processes inherit.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MODEL = ROOT / "examples" / "mlp" / "mlp.tar.gz"
INPUTS = ROOT / "examples" / "mlp" / "example_inputs.npz"

#: what a job's status is once it has ended
FINAL_STATES = ("succeeded", "failed", "cancelled")


def bench_env(**extra: str) -> dict[str, str]:
    """This process's environment without its ``KILN_`` settings, tuned for a benchmark.

    No keys and no fairness throttling: the benchmarks measure the service's own overhead. The
    compile cache is off (every job compiles) unless ``extra`` sets ``KILN_CACHE_MAX_BYTES``.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    env.update(KILN_AUTH="off", KILN_RATE_LIMIT_PER_MINUTE="0", KILN_MAX_ACTIVE_JOBS_PER_TENANT="0")
    env.update(KILN_CACHE_MAX_BYTES="0")
    env.update(extra)
    return env


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def embedded(name: str, work: Path, env: dict[str, str]) -> Service:
    """``kiln-service up`` (filesystem broker, SQLite, local artifacts) with its data in ``work``."""
    port = free_port()
    data = work / re.sub(r"[^A-Za-z0-9_.-]+", "-", name)
    return Service(name, [[str(BIN / "kiln-service"), "up", "--port", str(port), "--data-dir",
                           str(data)]], env, port, work / "logs")


class Service:
    """A running Kiln (processes started here, stopped by pid and group)."""

    def __init__(self, name: str, argvs: list[list[str]], env: dict[str, str], port: int,
                 logs: Path) -> None:
        self.name, self.url = name, f"http://127.0.0.1:{port}"
        logs.mkdir(parents=True, exist_ok=True)
        self.procs = []
        for i, argv in enumerate(argvs):
            with open(logs / f"{name.replace('/', '-')}-{i}.log", "ab") as out:
                self.procs.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                                   env=env, start_new_session=True))
        self.client = httpx.Client(base_url=self.url, timeout=60)
        #: per job: the worker's own account of where the time went (Job.report["worker_timings"])
        self.breakdowns: list[dict[str, float]] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if self.client.get("/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            self.stop()
            raise RuntimeError(f"{name} did not start; see {logs}")
        self.compile()  # warm-up: the worker's first job pays one-off costs
        self.breakdowns.clear()

    def compile(self) -> float:
        """Submit the example and wait until it succeeded; return the seconds taken."""
        start = time.perf_counter()
        resp = self.client.post("/v1/compile", files={
            "model": ("mlp.tar.gz", MODEL.read_bytes()), "example_inputs": ("x.npz", INPUTS.read_bytes())})
        resp.raise_for_status()
        job_id = resp.json()["id"]
        while True:
            job = self.client.get(f"/v1/jobs/{job_id}").json()
            if job["status"] == "succeeded" and job["artifacts"]:
                total = time.perf_counter() - start
                self.breakdowns.append({**job["report"]["worker_timings"], "total": total,
                                        "warm_ready": self._warm_ready(job_id)})
                return total
            if job["status"] in ("failed", "cancelled"):
                raise RuntimeError(f"{self.name}: job {job_id} {job['status']}: {job['failure']}")
            time.sleep(0.02)

    def _warm_ready(self, job_id: str) -> float:
        """1.0 if a compile process started ahead, with TensorFlow loaded, took the job; else 0."""
        log = self.client.get(f"/v1/jobs/{job_id}/artifacts/compile.log").text
        return 1.0 if "takes the job" in log and "TensorFlow loaded;" in log else 0.0

    def stop(self) -> None:
        self.client.close()
        for proc in reversed(self.procs):
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def submit_and_wait(client: httpx.Client, files: dict[str, tuple[str, bytes]],
                    data: dict[str, str] | None = None) -> tuple[float, dict[str, object]]:
    """Submit, then poll every 20 ms until the job ended; return the seconds and the job."""
    start = time.perf_counter()
    resp = client.post("/v1/compile", files=files, data=data)
    resp.raise_for_status()
    job = resp.json()
    while job["status"] not in FINAL_STATES:
        time.sleep(0.02)
        job = client.get(f"/v1/jobs/{job['id']}").json()
    return time.perf_counter() - start, job
