"""The compile sandbox and the compile limits, caused for real on one worker (no Celery).

Models that hide their file reads and writes from the op scan (a tf.data pipeline rebuilt from a
serialised graph string, see ``_build_sandbox_models.py``) run through ``run_compile_job`` with a
real SQLite job store, local artifact store and compile child: once with
``KILN_WORKER_SANDBOX=none``, to show the model really reads the secrets and writes outside its
folder when nothing stops it, then under bubblewrap, where it gets nothing. A thread bomb and a
memory bomb cross the pids and memory cgroups and fail once, naming the limit and the peak.
(The same escape on full stacks, embedded and Redis + PostgreSQL: ``test_sandbox_stacks.py``.)
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from fault_support import BOMB_SCRIPT, wait_for
from integration_support import base_env, runner_pids

from kiln_client.models import FailureKind, JobStatus
from kiln_service import migrations
from kiln_service.config import Settings
from kiln_service.stores.artifacts import LocalArtifactStore, upload_key
from kiln_service.stores.jobs import JobStore
from kiln_worker._compile_job import run_compile_job
from kiln_worker._context import WorkerContext
from kiln_worker._sandbox import isolation
from kiln_worker._supervise import ChildProcess, child_environment
from kiln_worker.config import WorkerSettings

HERE = Path(__file__).resolve().parent
TOKEN = secrets.token_hex(8)
LEAK = re.compile(r"KILN-LEAK-BEGIN (.*) KILN-LEAK-END")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="cgroups and a root worker's sandbox")


def build(script: str, out: Path, *args: str) -> Path:
    """Run a model builder in a subprocess (no TensorFlow in the test process)."""
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, script, str(out), *args], env=base_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def plant_secrets(data: Path, work: Path) -> dict[str, Path]:
    """Secret files where a compile must not look: data dir, key, artifact store, other job."""
    other = work / "kiln-job-othertenant"
    places = {"data": data / "secret.txt", "key": data / "api-key",
              "store": data / "artifacts" / "jobs" / "other" / "secret.txt",
              "other_job": other / "home" / "compile.log"}
    for name, path in places.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"SECRET-{name}-{TOKEN}\n")
    return places


def escape_spec(places: dict[str, Path], data: Path, work: Path, pids: list[int]) -> dict[str, Any]:
    return {
        "read": [*(str(p) for p in places.values()), "/etc/shadow", "/proc/1/environ",
                 *(f"/proc/{pid}/environ" for pid in pids)],
        "globs": ["/proc/*/environ", f"{work}/kiln-job-*/*/*"],
        "write": [str(data / f"escaped-{TOKEN}.txt"), f"/tmp/kiln-escaped-{TOKEN}.txt"],
    }


def read_paths(log: str) -> set[str]:
    """The paths the reader model read something from, as it printed them."""
    found = LEAK.search(log)
    assert found is not None, f"the model did not run its reads:\n{log[-3000:]}"
    return set(re.findall(r"\\n(/[^=\\\"]+)=", found.group(1)))


@pytest.fixture(scope="module")
def area(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("sandbox")
    data, work = root / "data", root / "work"
    places = plant_secrets(data, work)
    spec = root / "spec.json"
    spec.write_text(json.dumps(escape_spec(places, data, work, [os.getpid()])))
    models = build(str(HERE / "_build_sandbox_models.py"), root / "models", str(spec))
    build_bomb = subprocess.run([sys.executable, "-c", BOMB_SCRIPT, str(models)], env=base_env(),
                                capture_output=True, text=True, timeout=300)
    assert build_bomb.returncode == 0, build_bomb.stderr[-3000:]
    return {"root": root, "data": data, "work": work, "places": places, "models": models}


def context(area: dict[str, Any], **options: Any) -> WorkerContext:
    settings = Settings(data_dir=area["data"])
    migrations.upgrade(settings.resolved_database_url)
    opts = WorkerSettings(poll_seconds=0.2, kill_grace_seconds=1.0, log_flush_seconds=0.2,
                          work_dir=area["work"], **options)
    return WorkerContext(settings=settings, options=opts,
                         jobs=JobStore(settings.resolved_database_url),
                         artifacts=LocalArtifactStore(area["data"] / "artifacts"))


def compile_job(ctx: WorkerContext, model: Path, npz: Path | None = None) -> tuple[Any, str]:
    """Create a job as the API does (skipping its op scan), run it; return (job, its log)."""
    job_id = f"sb{time.monotonic_ns()}"
    digests = {"model": ctx.artifacts.put_file(upload_key(job_id, "model"), model)[1]}
    if npz is not None:
        digests["example_inputs"] = ctx.artifacts.put_file(
            upload_key(job_id, "example_inputs.npz"), npz)[1]
    ctx.jobs.create_job(job_id=job_id, target="xla", input_digests=digests, timeout_seconds=600)
    while True:  # system errors are retried, as the queue would
        run_compile_job(ctx, job_id)
        job = ctx.jobs.get_job(job_id=job_id)
        if job is not None and job.status != JobStatus.QUEUED:
            break
    log = "\n".join(entry.line for entry in ctx.jobs.read_logs(job_id=job_id))
    return job, log


def assert_failed_once(job: Any, code: str) -> None:
    """The job failed on its first attempt, as the model's fault, with ``code``."""
    assert job.status == JobStatus.FAILED and job.attempts == 1, job
    assert job.failure is not None and job.failure.kind == FailureKind.CLIENT_ERROR, job.failure
    assert job.failure.code == code, job.failure


@pytest.fixture
def sandboxed(area: dict[str, Any]) -> Iterator[WorkerContext]:
    ctx = context(area)
    yield ctx
    ctx.jobs.dispose()


def test_without_a_sandbox_the_model_reads_secrets_and_writes_outside(area: dict[str, Any]
                                                                      ) -> None:
    # The control: the same models, sandbox explicitly off, succeed at escaping.
    ctx = context(area, sandbox="none")
    models, places = area["models"], area["places"]
    _, log = compile_job(ctx, models / "reader" / "model.tar.gz",
                         models / "reader" / "example_inputs.npz")
    got = read_paths(log)
    print(f"\nno sandbox: the model read {len(got)} files, such as {sorted(got)[:6]}")
    assert {str(p) for p in places.values()} <= got and "/etc/shadow" in got
    assert f"/proc/{os.getpid()}/environ" in got
    escaped = area["data"] / f"escaped-{TOKEN}.txt"
    compile_job(ctx, models / "writer" / "model.tar.gz", models / "writer" / "example_inputs.npz")
    assert escaped.exists()
    escaped.unlink()
    Path(f"/tmp/kiln-escaped-{TOKEN}.txt").unlink(missing_ok=True)
    ctx.jobs.dispose()


def test_sandboxed_model_reads_nothing_outside_its_folder(area: dict[str, Any],
                                                          sandboxed: WorkerContext) -> None:
    models = area["models"]
    job, log = compile_job(sandboxed, models / "reader" / "model.tar.gz",
                           models / "reader" / "example_inputs.npz")
    got = read_paths(log)
    print(f"\nbubblewrap: the model read only {sorted(got)}; job {job.status.value}")
    assert TOKEN not in log and TOKEN not in (job.failure.message if job.failure else "")
    assert not {str(p) for p in area["places"].values()} & got
    assert "/etc/shadow" not in got and f"/proc/{os.getpid()}/environ" not in got
    # What it can read: its own PID namespace's environments (the scrubbed child environment).
    for path in got:
        assert path.startswith(("/proc/", str(area["work"]))), path
    assert "(bubblewrap sandbox)" in log


def test_sandboxed_model_writing_outside_fails_without_creating_the_file(
        area: dict[str, Any], sandboxed: WorkerContext) -> None:
    models = area["models"]
    job, _ = compile_job(sandboxed, models / "writer" / "model.tar.gz",
                           models / "writer" / "example_inputs.npz")
    print(f"\nwriter under bubblewrap: {job.status.value} {job.failure}")
    # (The message says "Graph execution error"; TensorFlow's whole text is issue 10 point 3.)
    assert_failed_once(job, "ModelError")
    assert not (area["data"] / f"escaped-{TOKEN}.txt").exists()
    assert not Path(f"/tmp/kiln-escaped-{TOKEN}.txt").exists()


def test_sandboxed_process_cannot_open_a_socket(tmp_path: Path, area: dict[str, Any]) -> None:
    sandbox = isolation(Settings(data_dir=area["data"]),
                        WorkerSettings(work_dir=area["work"])).sandbox
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.settimeout(0.5)
        port = server.getsockname()[1]
        code = ("import socket\nfor host in ('127.0.0.1', '1.1.1.1'):\n    try:\n"
                f"        socket.create_connection((host, {port}), timeout=3)\n"
                "        print('connected', host)\n    except OSError as e:\n"
                "        print('refused', host, e.errno)\n")
        job = tmp_path / "job"
        job.mkdir()
        sandbox.prepare(job)
        child = ChildProcess(sandbox.command([sys.executable, "-c", code], job),
                             env=child_environment(job), cwd=job)
        while child.poll() is None:
            time.sleep(0.05)
        lines = [line for _, line in child.finish()]
        with pytest.raises(TimeoutError):
            server.accept()  # nobody reached the listener
    print(f"\nsocket from the sandbox: {lines}")
    assert sorted(lines) == sorted([f"refused 127.0.0.1 {111}", "refused 1.1.1.1 101"]), lines


def test_thread_bomb_fails_once_naming_the_process_limit(area: dict[str, Any],
                                                         sandboxed: WorkerContext) -> None:
    models = area["models"]
    job, _ = compile_job(sandboxed, models / "threads" / "model.tar.gz",
                         models / "threads" / "example_inputs.npz")
    print(f"\nthread bomb: {job.status.value} after {job.attempts} attempt(s): {job.failure}")
    assert_failed_once(job, "ProcessLimit")
    assert "limit of 4096" in job.failure.message and "peak" in job.failure.message


def test_memory_bomb_fails_once_with_the_limit_and_the_peak(area: dict[str, Any]) -> None:
    ctx = context(area, child_max_memory_bytes=3 * 2**30 // 2)
    models = area["models"]
    job, _ = compile_job(ctx, models / "model.tar.gz", models / "example_inputs.npz")
    ctx.jobs.dispose()
    print(f"\nmemory bomb (8 GiB) under a 1.5 GiB memory cgroup: {job.status.value} after "
          f"{job.attempts} attempt(s): {job.failure}")
    assert_failed_once(job, "MemoryLimit")
    peak = re.search(r"peak ([\d.]+) GiB", job.failure.message)
    assert "limit of 1.5 GiB" in job.failure.message and peak is not None, job.failure.message
    assert float(peak.group(1)) >= 1.4


def _compile_process(job_id: str) -> int | None:
    """The sandboxed Python of a job's compile (not the bwrap processes around it)."""
    for pid in runner_pids(job_id):
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            continue
        if "bwrap" not in exe:
            return pid
    return None


def _hook_reached(ctx: Any, job_id: str, attempt: int) -> bool:
    """Whether attempt ``attempt``'s compile logged its test-hook sleep (TensorFlow is loaded)."""
    lines = [e.line for e in ctx.jobs.read_logs(job_id=job_id)]
    starts = [i for i, line in enumerate(lines) if f" attempt {attempt} on " in line]
    return bool(starts) and any("test hook: sleep" in line for line in lines[starts[-1]:])


def test_a_compile_dying_of_a_signal_twice_is_the_models_failure(area: dict[str, Any]) -> None:
    ctx = context(area, test_hook_child_sleep_seconds=60)
    models = area["models"]
    job_id = f"sb{time.monotonic_ns()}"
    digests = {"model": ctx.artifacts.put_file(upload_key(job_id, "model"),
                                               models / "reader" / "model.tar.gz")[1]}
    ctx.jobs.create_job(job_id=job_id, target="xla", input_digests=digests, timeout_seconds=600)
    for attempt in (1, 2):
        runner = threading.Thread(target=run_compile_job, args=(ctx, job_id))
        runner.start()
        pid = wait_for(lambda: _compile_process(job_id), "the compile process", timeout=120)
        wait_for(lambda n=attempt: _hook_reached(ctx, job_id, n),
                 "this attempt's compile to load", 300)
        os.kill(pid, signal.SIGSEGV)
        runner.join(timeout=120)
        job = ctx.jobs.get_job(job_id=job_id)
        print(f"\nattempt {attempt} killed by SIGSEGV: {job.status.value} {job.failure}")
        if attempt == 1:
            assert job.status == JobStatus.QUEUED  # retried once, as a system error
    ctx.jobs.dispose()
    assert job.status == JobStatus.FAILED and job.attempts == 2
    assert job.failure is not None and job.failure.kind == FailureKind.CLIENT_ERROR
    assert job.failure.code == "Crashed" and "SIGSEGV" in job.failure.message
    assert "test hook: sleeping" in job.failure.message  # the last log lines


def test_job_folders_of_gone_workers_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    from kiln_worker._job_dirs import job_dir, owner_tag, sweep_job_dirs

    gone = subprocess.run([sys.executable, "-c", "from kiln_worker._job_dirs import owner_tag; "
                           "print(owner_tag())"], capture_output=True, text=True, check=True)
    orphan = tmp_path / f"kiln-job-j1-{gone.stdout.strip()}-abc123"
    (orphan / "home").mkdir(parents=True)
    unrelated = tmp_path / "kiln-job-made-by-an-older-version"
    unrelated.mkdir()
    with job_dir("j2", tmp_path) as live:
        assert owner_tag() in live
        removed = sweep_job_dirs(tmp_path)
        assert removed == [orphan.name] and Path(live).is_dir() and unrelated.is_dir()
    assert not orphan.exists()


def test_links_a_compile_leaves_are_never_followed_by_the_worker(tmp_path: Path) -> None:
    from kiln_worker._job_dirs import UnsafeOutputError, compiled_file

    box = tmp_path / "compile"
    (box / "out").mkdir(parents=True)
    (box / "out" / "report.json").symlink_to("/etc/shadow")
    (box / "elsewhere").symlink_to("/etc", target_is_directory=True)
    (box / "out" / "ok.json").write_text("{}")
    with pytest.raises(UnsafeOutputError, match=r"symbolic link at out/report\.json"):
        compiled_file(box, box / "out" / "report.json")
    with pytest.raises(UnsafeOutputError, match="symbolic link at elsewhere"):
        compiled_file(box, box / "elsewhere" / "passwd")
    assert compiled_file(box, box / "out" / "ok.json") == box / "out" / "ok.json"
