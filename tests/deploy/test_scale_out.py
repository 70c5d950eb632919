"""The multi-host layout on loopback: API, two xla workers and an inf1 worker as separate processes,
with Redis, PostgreSQL and an S3-compatible server (moto) as the shared stores.

Each worker gets its own data and work directories, as separate hosts would. Jobs submitted through
the API must be processed by both xla workers, each job exactly once, and every upload and artifact
must live in the object store only (nothing left on the API's or the workers' disks). The commands
are those of docker-compose.yml (tests/deploy/test_compose.py checks that they match).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from deploy_support import REPO, S3_ENV, TESTED_COMMANDS, free_port, stop_process, wait_http

from _support.postgres import fresh_database

try:
    import kiln_worker.tasks  # noqa: F401  (the worker runtime this test drives)

    WORKER_MISSING = ""
except ImportError as exc:  # pragma: no cover - only while the worker is being built
    WORKER_MISSING = f"kiln_worker.tasks cannot be imported yet: {exc}"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(bool(WORKER_MISSING), reason=WORKER_MISSING or "worker present"),
]

EXAMPLE = REPO / "examples" / "mlp"
REDIS_DB = 13  # this suite's own Redis database
XLA_JOBS = 6
_ATTEMPT_LINE = re.compile(r"\[kiln\] job (\w+) attempt (\d+) on (\S+):(\d+)")
TERMINAL = {"succeeded", "failed", "cancelled"}


@dataclass
class Cluster:
    api: str
    env: dict[str, str]
    bucket: str
    prefix: str
    workers: dict[str, subprocess.Popen[Any]]
    dirs: list[Path]
    logs: Path


def bin_path(command: list[str]) -> list[str]:
    """The tested command, run from this interpreter's environment."""
    return [str(Path(sys.executable).parent / command[0]), *command[1:]]


def start(name: str, command: list[str], env: dict[str, str], logs: Path) -> subprocess.Popen[Any]:
    out = open(logs / f"{name}.log", "w")  # noqa: SIM115 - closed when the process is reaped
    return subprocess.Popen(bin_path(command), stdout=out, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True, cwd=logs)


def wait_for_log(path: Path, pattern: str, proc: subprocess.Popen[Any], attempts: int = 600) -> None:
    for _ in range(attempts):
        if pattern in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            pytest.fail(f"{path.stem} exited ({proc.returncode}):\n{path.read_text()[-4000:]}")
        time.sleep(0.2)
    pytest.fail(f"{path.stem} never logged {pattern!r}:\n{path.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    redis = pytest.importorskip("redis")
    base = os.environ.get("KILN_TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")
    url = f"{base}/{REDIS_DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with fresh_database("kiln_deploy_scale") as url:
        yield url


@pytest.fixture(scope="module")
def scale_bucket(s3_client: Any) -> Iterator[str]:
    name = f"kiln-scale-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    yield name
    for key in bucket_keys(s3_client, name):
        s3_client.delete_object(Bucket=name, Key=key)
    s3_client.delete_bucket(Bucket=name)


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, pg_url: str, scale_bucket: str,
    moto_endpoint: str,
) -> Iterator[Cluster]:
    """Migrate, then start the API, two xla workers and an inf1 worker (one cluster per module)."""
    tmp_path = tmp_path_factory.mktemp("scale")
    bucket = scale_bucket
    logs = tmp_path / "logs"
    logs.mkdir()
    prefix = "scale"
    port = free_port()
    base_env = {
        **os.environ, **S3_ENV,
        "AWS_ENDPOINT_URL": moto_endpoint,
        "KILN_DATABASE_URL": pg_url,
        "KILN_BROKER_URL": redis_url,
        "KILN_STORAGE_URL": f"s3://{bucket}/{prefix}?addressing_style=path&part_size_mb=5",
        "KILN_AUTO_MIGRATE": "false",
        "KILN_AUTH": "off",  # scale-out, not tenants, is under test here
        "TF_USE_LEGACY_KERAS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    migrate = subprocess.run(bin_path(TESTED_COMMANDS["migrate"]), env={**base_env, "KILN_DATA_DIR": str(tmp_path / "migrate")},
                             capture_output=True, text=True, timeout=300)
    assert migrate.returncode == 0, f"kiln-service migrate failed:\n{migrate.stderr}"
    procs: dict[str, subprocess.Popen[Any]] = {}
    dirs: list[Path] = []

    def host_env(name: str) -> dict[str, str]:
        # One data dir and work dir per process, as on separate hosts.
        data, work = tmp_path / name / "data", tmp_path / name / "work"
        work.mkdir(parents=True)
        dirs.extend([data, work])
        return {**base_env, "KILN_DATA_DIR": str(data), "KILN_WORKER_WORK_DIR": str(work)}

    try:
        procs["api"] = start("api", TESTED_COMMANDS["api"],
                             {**host_env("api"), "KILN_HOST": "127.0.0.1", "KILN_PORT": str(port)}, logs)
        for name in ("xla-a", "xla-b"):
            procs[name] = start(name, TESTED_COMMANDS["worker-xla"], host_env(name), logs)
        procs["inf1"] = start("inf1", TESTED_COMMANDS["worker-inf1"], host_env("inf1"), logs)
        api = f"http://127.0.0.1:{port}"
        wait_http(f"{api}/livez", procs["api"], "kiln-service serve")
        for name in ("xla-a", "xla-b", "inf1"):
            wait_for_log(logs / f"{name}.log", "ready.", procs[name])
        yield Cluster(api, base_env, bucket, prefix, {k: v for k, v in procs.items() if k != "api"}, dirs, logs)
    finally:
        for proc in procs.values():
            stop_process(proc)


def submit(client: httpx.Client, target: str, name: str) -> str:
    with open(EXAMPLE / "mlp.tar.gz", "rb") as model, open(EXAMPLE / "example_inputs.npz", "rb") as npz:
        response = client.post("/v1/compile", files={
            "model": ("mlp.tar.gz", model, "application/gzip"),
            "example_inputs": ("example_inputs.npz", npz, "application/octet-stream"),
        }, data={"target": target, "name": name, "timeout_seconds": "600"})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def wait_terminal(client: httpx.Client, job_ids: list[str], cluster: Cluster) -> dict[str, dict[str, Any]]:
    jobs: dict[str, dict[str, Any]] = {}
    for _ in range(3000):  # generous bound: 2 cores shared with the rest of the suite
        jobs = {j: client.get(f"/v1/jobs/{j}").json() for j in job_ids}
        if all(job["status"] in TERMINAL for job in jobs.values()):
            return jobs
        for name, proc in cluster.workers.items():
            if proc.poll() is not None:
                pytest.fail(f"worker {name} died:\n{(cluster.logs / f'{name}.log').read_text()[-4000:]}")
        time.sleep(0.5)
    pytest.fail(f"jobs did not finish: {[(j, v['status'], v.get('stage')) for j, v in jobs.items()]}")


def attempts_by_worker(client: httpx.Client, job_id: str) -> list[int]:
    """The parent pid (the kiln-worker process) of each attempt the job's log records."""
    text = client.get(f"/v1/jobs/{job_id}/logs").text
    parents = []
    for match in _ATTEMPT_LINE.finditer(text):
        assert match.group(1) == job_id
        child = int(match.group(4))
        status = Path(f"/proc/{child}/status")
        assert status.exists(), f"pool process {child} of job {job_id} is gone"
        ppid = next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("PPid:"))
        parents.append(ppid)
    return parents


def compose_healthcheck(anchor: str) -> str:
    """The shell command of a healthcheck anchor in docker-compose.yml, as the container runs it."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    test = compose[anchor]["test"]
    assert test[0] == "CMD-SHELL"
    return str(test[1]).replace("$$", "$")  # Compose's escape for a literal $


def test_healthchecks_of_compose_pass_against_live_processes(cluster: Cluster) -> None:
    # The API's readiness covers the S3 store, PostgreSQL and Redis.
    ready = httpx.get(f"{cluster.api}/readyz", timeout=30)
    assert ready.status_code == 200, ready.text
    # The workers' healthcheck from docker-compose.yml answers for each live worker node.
    check = compose_healthcheck("x-worker-health")
    for target in ("xla", "inf1"):
        env = {**cluster.env, "KILN_WORKER_TARGETS": target, "HOSTNAME": socket.gethostname(),
               "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
        result = subprocess.run(["sh", "-c", check], env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{target} worker healthcheck failed:\n{result.stdout}{result.stderr}"
        assert "pong" in result.stdout
    # And it fails for a node that does not exist, so the check can tell.
    env = {**cluster.env, "KILN_WORKER_TARGETS": "nosuch", "HOSTNAME": "nowhere",
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    result = subprocess.run(["sh", "-c", check.replace("--timeout 10", "--timeout 2")], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0


def bucket_keys(s3_client: Any, bucket: str) -> list[str]:
    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def test_jobs_spread_over_two_xla_workers_artifacts_in_object_store(cluster: Cluster, s3_client: Any) -> None:
    with httpx.Client(base_url=cluster.api, timeout=60) as client:
        xla_ids = [submit(client, "xla", f"scale-{i}") for i in range(XLA_JOBS)]
        inf1_id = submit(client, "inf1", "scale-inf1")
        jobs = wait_terminal(client, [*xla_ids, inf1_id], cluster)

        # Each job ran exactly once, and both xla workers took jobs.
        workers = {"xla-a": cluster.workers["xla-a"].pid, "xla-b": cluster.workers["xla-b"].pid}
        ran_on = {job_id: attempts_by_worker(client, job_id) for job_id in xla_ids}
        assert all(len(p) == 1 for p in ran_on.values()), f"a job ran more than once: {ran_on}"
        assert all(jobs[j]["attempts"] == 1 for j in xla_ids)
        used = {p[0] for p in ran_on.values()}
        assert used == set(workers.values()), f"jobs did not use both xla workers: {ran_on} vs {workers}"

        # The inf1 job went to the inf1 worker only; without AWS's toolchain it fails, saying so.
        assert attempts_by_worker(client, inf1_id) == [cluster.workers["inf1"].pid]
        inf1 = jobs[inf1_id]
        assert inf1["status"] == "failed"
        assert "tensorflow-neuron" in inf1["failure"]["message"], inf1["failure"]

        # Uploads and artifacts live in the object store, with the sha256 the API reports.
        keys = bucket_keys(s3_client, cluster.bucket)
        for job_id in xla_ids:
            assert f"{cluster.prefix}/default/jobs/{job_id}/upload/model" in keys
            assert jobs[job_id]["artifacts"], f"job {job_id} stored no artifact"
            for artifact in jobs[job_id]["artifacts"]:
                attempt = jobs[job_id]["attempts"]  # the published attempt's own keys
                key = f"{cluster.prefix}/default/jobs/{job_id}/attempt-{attempt}/{artifact['name']}"
                assert key in keys, f"{key} missing from the bucket"
                head = s3_client.head_object(Bucket=cluster.bucket, Key=key)
                assert head["Metadata"]["sha256"] == artifact["sha256"]
                assert head["ContentLength"] == artifact["size"]

        # Nothing but the object store holds uploads or artifacts: the hosts' disks keep no copies.
        leftovers = [p for d in cluster.dirs if d.exists() for p in d.rglob("*")
                     if p.is_file() and p.name in {"model", "compiled_model.tar.gz", "report.json",
                                                   "compile.log", "example_inputs.npz", "mlp.tar.gz"}]
        assert leftovers == [], f"artifacts or uploads left on local disks: {leftovers}"
        # Each worker keeps a compile process waiting for its next job, in a folder of its own
        # (``kiln-job-warm-*``, no job's files in it: see the check above); nothing else is left.
        work_left = [p for d in cluster.dirs if d.name == "work" for p in d.iterdir()
                     if not p.name.startswith("kiln-job-warm-")]
        assert work_left == [], f"job work directories not cleaned up: {work_left}"

        # The compiles succeeded, and downloads through the API stream from the object store.
        for job_id in xla_ids:
            assert jobs[job_id]["status"] == "succeeded", jobs[job_id].get("failure")
        names = {a["name"] for a in jobs[xla_ids[0]]["artifacts"]}
        assert {"compiled_model.tar.gz", "report.json", "compile.log"} <= names
        job_id = xla_ids[0]
        # Each attempt stores under its own keys (its fence, which counts claims like attempts).
        attempt = jobs[job_id]["attempts"]
        key = f"{cluster.prefix}/default/jobs/{job_id}/attempt-{attempt}/compiled_model.tar.gz"
        stored = s3_client.get_object(Bucket=cluster.bucket, Key=key)["Body"].read()
        whole = client.get(f"/v1/jobs/{job_id}/artifacts/compiled_model.tar.gz")
        assert whole.status_code == 200 and whole.content == stored
        assert whole.headers["X-Checksum-SHA256"] == hashlib.sha256(stored).hexdigest()
        part = client.get(f"/v1/jobs/{job_id}/artifacts/compiled_model.tar.gz",
                          headers={"Range": "bytes=100-1099"})
        assert part.status_code == 206 and part.content == stored[100:1100]
