"""Fault injection, for real, on loopback: each test breaks something and checks the promise.

The stack (``faults`` fixture, :mod:`fault_support`): our own ``redis-server``, our own
PostgreSQL cluster, a 48 MB tmpfs as the artifact store, ``kiln-service serve`` and one
``kiln-worker`` (concurrency 1). Short leases (6 s) and reconciler passes (2 s) keep recovery
quick; a test hook makes each compile child sleep 5 s before tracing, so "mid-job" is real.
Each test prints what it observed (recovery times are printed, never asserted). Processes are
killed by pid, and only ones these tests started (or their descendants).
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fault_support import (
    BIN,
    FaultStack,
    build_models,
    faults,
    runner_pids_of,
    signal_pid,
    start,
    terminal,
    wait_for,
)

from kiln_service.stores.artifacts import LocalArtifactStore, list_attempts

__all__ = ["faults"]  # the fixture, re-exported so pytest finds it here

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_models(tmp_path_factory.mktemp("fault-models"))


@pytest.fixture
def mlp(models: Path) -> Iterator[tuple[Path, Path]]:
    yield models / "mlp" / "model.tar.gz", models / "mlp" / "example_inputs.npz"


def _running_child(faults: FaultStack, job_id: str) -> int:
    stack = faults.client()
    stack.wait(job_id, timeout=120, until=("running", "succeeded", "failed"))
    pids = wait_for(lambda: runner_pids_of(job_id), f"the compile child of {job_id}", timeout=60)
    return int(pids[0])


def _assert_published_once(faults: FaultStack, job: dict, tmp: Path) -> None:
    """One succeeded status, each artifact once, and the stored bytes match the record."""
    assert job["status"] == "succeeded", job
    names = [a["name"] for a in job["artifacts"]]
    assert sorted(names) == sorted(set(names)), names
    assert {"compiled_model.tar.gz", "report.json", "compile.log"} <= set(names)
    stack = faults.client()
    for artifact in job["artifacts"]:
        data = stack.download(job["id"], artifact["name"], tmp / artifact["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == artifact["sha256"], artifact["name"]
    log = stack.client.get(f"/v1/jobs/{job['id']}/logs").text
    assert log.count("finished: succeeded") <= 1


def test_kill9_compile_child_mid_job_is_retried_and_published_once(
    faults: FaultStack, mlp: tuple[Path, Path], tmp_path: Path
) -> None:
    stack = faults.client()
    job = stack.submit(*mlp)
    pid = _running_child(faults, job["id"])
    signal_pid(pid, signal.SIGKILL)
    done = terminal(stack, job["id"])
    print(f"\nkill -9 compile child {pid}: {done['status']} after {done['attempts']} attempts")
    assert done["attempts"] == 2, done
    _assert_published_once(faults, done, tmp_path)
    log = stack.client.get(f"/v1/jobs/{job['id']}/logs").text
    assert "SIGKILL" in log and "queued again" in log
    row = faults.job_row(job["id"])
    assert row["fence"] == 2 and row["status"] == "succeeded"


def test_time_limit_kills_the_process_group(faults: FaultStack, mlp: tuple[Path, Path]) -> None:
    stack = faults.client()
    job = stack.submit(*mlp, timeout_seconds=2)  # the test hook sleeps 5 s in the child
    done = terminal(stack, job["id"])
    print(f"\ntime limit 2 s: {done['status']} {done['failure']}")
    assert done["status"] == "failed" and done["attempts"] == 1
    assert done["failure"]["kind"] == "client_error" and done["failure"]["code"] == "TimeOut"
    assert runner_pids_of(job["id"]) == []


def test_memory_bomb_is_a_client_error_and_the_worker_serves_on(
    faults: FaultStack, models: Path, mlp: tuple[Path, Path]
) -> None:
    stack = faults.client()
    worker_pid = faults.worker.popen.pid  # type: ignore[union-attr]
    bomb = stack.submit(models / "bomb" / "model.tar.gz", models / "bomb" / "example_inputs.npz")
    done = terminal(stack, bomb["id"])
    print(f"\nmemory bomb (8 GiB under a 2 GiB memory cgroup): {done['status']} {done['failure']}")
    assert done["status"] == "failed" and done["attempts"] == 1
    assert done["failure"]["kind"] == "client_error"
    assert done["failure"]["code"] == "MemoryLimit"
    assert "limit of 2.0 GiB (peak " in done["failure"]["message"], done["failure"]
    assert faults.worker.popen.poll() is None and faults.worker.popen.pid == worker_pid  # type: ignore[union-attr]
    after = stack.submit(*mlp)
    assert terminal(stack, after["id"])["status"] == "succeeded"


def test_redis_restart_mid_run_loses_nothing(faults: FaultStack, mlp: tuple[Path, Path]) -> None:
    stack = faults.client()
    running = stack.submit(*mlp)
    _running_child(faults, running["id"])
    waiting = stack.submit(*mlp)  # its message sits in Redis: the restart below loses it
    faults.redis.kill()
    down = stack.client.post("/v1/compile", files={"model": ("m.tar.gz", mlp[0].read_bytes())})
    jobs_while_down = faults.count_jobs()
    faults.redis.start()
    started = time.monotonic()
    first, second = terminal(stack, running["id"]), terminal(stack, waiting["id"])
    print(f"\nredis restarted: POST while down → {down.status_code} "
          f"Retry-After={down.headers.get('retry-after')}; running job {first['status']}, "
          f"queued job {second['status']} {time.monotonic() - started:.1f} s after the restart")
    assert first["status"] == "succeeded" and second["status"] == "succeeded"
    assert down.status_code == 503 and "retry-after" in {k.lower() for k in down.headers}
    assert faults.count_jobs() == jobs_while_down
    after = stack.submit(*mlp)  # the worker reconnected by itself
    assert terminal(stack, after["id"])["status"] == "succeeded"


def test_postgres_restart_mid_job(faults: FaultStack, mlp: tuple[Path, Path]) -> None:
    stack = faults.client()
    job = stack.submit(*mlp)
    _running_child(faults, job["id"])
    before = faults.count_jobs()
    faults.pg.stop()
    try:
        status = stack.client.get(f"/v1/jobs/{job['id']}")
        post = stack.client.post("/v1/compile", files={"model": ("m.tar.gz", mlp[0].read_bytes())})
        time.sleep(3)  # stay down across a heartbeat: the compile must carry on meanwhile
    finally:
        faults.pg.start()
    done = terminal(stack, job["id"])
    print(f"\npostgres restarted: GET → {status.status_code} "
          f"(Retry-After {status.headers.get('retry-after')}), POST → {post.status_code}; "
          f"job {done['status']} after {done['attempts']} attempt(s)")
    for resp in (status, post):
        assert resp.status_code == 503, resp.text
        assert "retry-after" in {k.lower() for k in resp.headers}
    assert faults.count_jobs() == before  # the POST created nothing
    assert done["status"] == "succeeded" and done["attempts"] <= 3


def test_api_killed_mid_upload_leaves_nothing(faults: FaultStack, mlp: tuple[Path, Path]) -> None:
    faults.client()
    before = faults.count_jobs()
    stored_before = _stored_jobs(faults)
    body = mlp[0].read_bytes() + os.urandom(2 << 20)  # 2 MB sent of 8 MB announced
    boundary = "kilnfaultboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"; "
            f"filename=\"m.tar.gz\"\r\nContent-Type: application/gzip\r\n\r\n").encode()
    total = len(head) + (8 << 20)
    sock = socket.create_connection(("127.0.0.1", faults.api_port))
    sock.sendall(
        f"POST /v1/compile HTTP/1.1\r\nHost: x\r\nContent-Length: {total}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n".encode() + head + body)
    staging_dir = faults.root / "data" / "staging"
    wait_for(lambda: any(staging_dir.glob("*")), "the upload to reach the staging folder", 30)
    staged = sorted(p.name for p in staging_dir.glob("*"))
    api = faults.api
    assert api is not None
    api.popen.send_signal(signal.SIGKILL)
    api.popen.wait()
    sock.close()
    faults.start_api()
    faults.client()
    staging = sorted(p.name for p in staging_dir.glob("*"))
    print(f"\nAPI killed mid-upload (staging held {staged}): jobs {before} → "
          f"{faults.count_jobs()}, stored job folders {len(stored_before)} → "
          f"{len(_stored_jobs(faults))}, staging after restart: {staging}")
    assert faults.count_jobs() == before
    assert _stored_jobs(faults) == stored_before
    leftovers = [p for p in staging_dir.rglob("*") if p.is_file()]
    assert leftovers == [], f"the restarted API left the cut-short upload in staging: {leftovers}"


def _stored_jobs(faults: FaultStack) -> set[str]:
    jobs_dir = faults.disk.path / "jobs"
    return {p.name for p in jobs_dir.iterdir()} if jobs_dir.is_dir() else set()


def test_disk_full_while_storing_artifacts(faults: FaultStack, mlp: tuple[Path, Path],
                                           tmp_path: Path) -> None:
    stack = faults.client()
    job = stack.submit(*mlp)
    _running_child(faults, job["id"])  # the upload is stored; the compile sleeps 5 s
    faults.disk.fill()
    try:
        def storage_failed() -> bool:
            return "StorageError" in stack.client.get(f"/v1/jobs/{job['id']}/logs").text
        wait_for(storage_failed, "the first attempt to hit the full disk", timeout=120)
        row = faults.job_row(job["id"])
        print(f"\ndisk full: attempt 1 → StorageError, job {row['status']}, recorded artifacts "
              f"{row['artifacts']}")
        assert row["artifacts"] == []  # nothing half-published
        assert row["status"] in ("queued", "running")  # retried, not failed for good
    finally:
        faults.disk.free()
    done = terminal(stack, job["id"])
    print(f"disk freed: job {done['status']} after {done['attempts']} attempts")
    assert done["attempts"] == 2
    _assert_published_once(faults, done, tmp_path)
    # What the first attempt managed to store before the disk filled was deleted by it.
    assert list_attempts(LocalArtifactStore(faults.disk.path), job["id"]) == {2}


def test_kill9_whole_worker_mid_job_then_new_worker_recovers(
    faults: FaultStack, mlp: tuple[Path, Path], tmp_path: Path
) -> None:
    stack = faults.client()
    job = stack.submit(*mlp)
    child = _running_child(faults, job["id"])
    worker = faults.worker
    assert worker is not None
    os.killpg(worker.popen.pid, signal.SIGKILL)  # the worker's own session: main + pool
    worker.popen.wait()
    killed_at = time.monotonic()
    wait_for(lambda: child not in runner_pids_of(job["id"]), "the orphaned compile to die", 30)
    faults.start_worker()
    done = terminal(stack, job["id"])
    print(f"\nkill -9 worker: job {done['status']} after {done['attempts']} attempts, "
          f"{time.monotonic() - killed_at:.1f} s after the kill (lease 6 s, pass every 2 s)")
    assert done["attempts"] == 2
    _assert_published_once(faults, done, tmp_path)


def test_duplicate_message_for_a_running_job_is_skipped(
    faults: FaultStack, mlp: tuple[Path, Path]
) -> None:
    """A redelivered message (visibility timeout) must not start a second, parallel run."""
    stack = faults.client()
    job = stack.submit(*mlp)
    _running_child(faults, job["id"])
    extra = start("worker-extra", [str(BIN / "kiln-worker"), "--targets", "xla",
                                   "--hostname", "kiln-extra@%h"], faults.env, faults.root / "logs")
    try:
        wait_for(lambda: "ready" in extra.log.read_text(errors="replace"), "the extra worker")
        send = subprocess.run([sys.executable, "-c", (
            "import sys; from kiln_service.config import get_settings; "
            "from kiln_service.queue import create_celery_app, enqueue_compile; "
            "enqueue_compile(create_celery_app(get_settings()), job_id=sys.argv[1], target='xla')"),
            job["id"]], env=faults.env, capture_output=True, text=True, timeout=60)
        assert send.returncode == 0, send.stderr
        wait_for(lambda: f"job {job['id']}: skipped" in extra.log.read_text(errors="replace"),
                 "the extra worker to skip the duplicate", timeout=60)
        assert faults.job_row(job["id"])["status"] == "running"  # skipped while it ran
    finally:
        extra.stop()
    done = terminal(stack, job["id"])
    print(f"\nduplicate message while running: skipped by the second worker; job "
          f"{done['status']} after {done['attempts']} attempt(s)")
    assert done["status"] == "succeeded" and done["attempts"] == 1
    assert faults.job_row(job["id"])["fence"] == 1
