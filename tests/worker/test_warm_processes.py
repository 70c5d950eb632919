"""Compile processes started ahead of their job (``KILN_WORKER_WARM_PROCESSES``).

In-process: a real sandboxed compile process waits with TensorFlow loaded, a real job adopts it
and runs under its own limits, the next one is another process, and closing the slot reaps the
waiting one. With ``kiln-worker``: the Celery pool process starts one ahead and reaps it when the
worker stops.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_worker_compile_job import submit
from worker_helpers import worker_context

from _support.processes import BIN, quiet_env, runner_pids, start
from kiln_service.stores.artifacts import artifact_key
from kiln_worker._compile_job import run_compile_job
from kiln_worker._context import WorkerContext
from kiln_worker._warm import WarmSlot
from kiln_worker.config import cpu_seconds


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[WorkerContext]:
    # The test hook keeps each compile alive two seconds after its handoff, to read its limits.
    with worker_context(tmp_path, test_hook_child_sleep_seconds=2.0) as context:
        yield context


def _messages(ctx: WorkerContext) -> list[str]:
    """Record every stage message the worker writes (the job store's own method, wrapped)."""
    seen: list[str] = []
    update = ctx.jobs.update_progress

    def recording(**kwargs: Any) -> Any:
        seen.append(kwargs["message"])
        return update(**kwargs)

    ctx.jobs.update_progress = recording  # type: ignore[method-assign]
    return seen


def _compile_pid(job_id: str) -> int:
    """The sandboxed Python running ``job_id`` (not the bwrap processes around it)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for pid in runner_pids(job_id):
            try:
                if "bwrap" not in os.readlink(f"/proc/{pid}/exe"):
                    return pid
            except OSError:
                continue
        time.sleep(0.05)
    raise AssertionError(f"no compile process of {job_id}")


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _cpu_limit(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max cpu time"):
            return line.split()[3]  # the soft limit
    raise AssertionError("no cpu limit line")


def test_a_job_adopts_the_waiting_process_which_runs_it_alone(ctx: WorkerContext,
                                                              zoo: Path) -> None:
    work = ctx.options.work_dir
    assert work is not None
    messages = _messages(ctx)
    slot = WarmSlot()
    slot.fill(ctx)
    first = slot.waiting
    assert first is not None and first.wait_ready(300), first and first.take_ready()
    assert [p.name[:14] for p in work.iterdir()] == ["kiln-job-warm-"]
    job_id = submit(ctx, zoo / "mlp" / "model.tar.gz", zoo / "mlp" / "example_inputs.npz",
                    timeout_seconds=120)
    seen: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: seen.update(run_compile_job(ctx, job_id, warm=slot)))
    runner.start()
    pid = _compile_pid(job_id)
    assert "--rehearse" in _cmdline(pid)  # started ahead: it rehearsed a compile while waiting
    deadline = time.monotonic() + 120  # handed over: the compile reached the test hook's sleep
    while "tracing the signature" not in messages and time.monotonic() < deadline:
        time.sleep(0.05)
    # The job's own CPU limit, set by the process itself before it read the spec; the
    # process was started with the longest allowed (KILN_MAX_TIMEOUT_SECONDS).
    assert _cpu_limit(pid) == str(cpu_seconds(120)) != str(cpu_seconds(
        ctx.settings.max_timeout_seconds))
    memory = first.limits.groups.memory
    if memory is not None:  # the group made when it started ahead holds the job's compile
        assert f"/{memory.name}" in Path(f"/proc/{pid}/cgroup").read_text()
    runner.join(timeout=300)
    assert seen["status"] == "succeeded"
    job = ctx.jobs.get_job(job_id=job_id)
    log = ctx.artifacts.path_for(artifact_key(job_id, "compile.log", job.fence)).read_text()
    assert f"compile process {first.child.pid} (bubblewrap sandbox) takes the job" in log
    assert "TensorFlow loaded" in log and "starting TensorFlow" not in messages
    # One job per process: it exited, its folder and groups are gone; the next is another.
    assert first.child.poll() is not None and list(work.iterdir()) == []
    assert memory is None or not memory.exists()
    slot.fill(ctx)
    second = slot.waiting
    assert second is not None and second.child.pid != first.child.pid
    # Shutting down reaps the waiting process, its folder and its groups.
    slot.close()
    assert second.child.poll() is not None and slot.waiting is None
    assert list(work.iterdir()) == []
    assert second.limits.groups.memory is None or not second.limits.groups.memory.exists()
    # No process waiting: the job starts one and says so instead of "fetching the upload".
    cold = submit(ctx, zoo / "mlp" / "model.tar.gz", zoo / "mlp" / "example_inputs.npz")
    seen.clear()
    runner = threading.Thread(target=lambda: seen.update(run_compile_job(ctx, cold, warm=slot)))
    runner.start()
    assert "--rehearse" not in _cmdline(_compile_pid(cold))  # the job would wait for it
    runner.join(timeout=300)
    assert seen["status"] == "succeeded"
    assert "starting TensorFlow" in messages and slot.waiting is None


def test_switched_off_no_process_is_started(ctx: WorkerContext) -> None:
    ctx.options = ctx.options.model_copy(update={"warm_processes": False})
    slot = WarmSlot()
    slot.fill(ctx)
    assert slot.waiting is None and ctx.options.work_dir is not None
    assert not ctx.options.work_dir.exists() or list(ctx.options.work_dir.iterdir()) == []


def _waiting_processes(work: Path) -> list[int]:
    """Compile processes (any, bwrap included) waiting in a folder under ``work``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if proc.name.isdigit() and "--wait" in cmdline and str(work) in cmdline:
            pids.append(int(proc.name))
    return pids


def test_the_worker_starts_one_ahead_and_reaps_it_when_stopped(tmp_path: Path) -> None:
    work = tmp_path / "work"
    env = quiet_env(KILN_DATA_DIR=str(tmp_path / "data"), KILN_WORKER_WORK_DIR=str(work))
    worker = start("worker", [str(BIN / "kiln-worker"), "--targets", "xla"], env, tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not _waiting_processes(work) and time.monotonic() < deadline:
            assert worker.popen.poll() is None, worker.tail()
            time.sleep(0.2)
        assert _waiting_processes(work), worker.tail()
        assert [p.name[:14] for p in work.iterdir()] == ["kiln-job-warm-"]
    finally:
        worker.popen.send_signal(signal.SIGTERM)
        worker.popen.wait(timeout=60)
    assert "started ahead" in worker.log.read_text()
    assert _waiting_processes(work) == [] and list(work.iterdir()) == [], worker.tail()
