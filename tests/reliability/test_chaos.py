"""Chaos: kill workers and compile processes and restart the broker while a batch compiles.

The stack is real and ours: an API (``kiln-service serve``) and two ``kiln-worker`` processes on
our own ``redis-server`` (no persistence: a restart loses what was queued) and a fresh database
on the PostgreSQL server, artifacts in a local folder. Six MLP compiles are submitted; while they
run, a loop repeatedly SIGKILLs a worker's whole process group (worker, pool process, compile
child, as a lost machine would) and starts it again, SIGKILLs one job's compile process (at most
once per job: a compile killed twice is the model's failure), and kills and restarts the broker.
Then the chaos stops and the test waits for the batch to end, bounded in time.

It ends with every job ``succeeded`` exactly once: one fenced finish (``finished: succeeded``
once in all worker logs), the published attempt is the job's last one, its artifacts download
with their recorded sha256, no attempt's outputs but the published one are left in the store,
no compile process is alive, and no ``kiln-job-*`` folder is left in the folders the workers use.
The random pauses and targets come from a seed printed at the start (``KILN_CHAOS_SEED``
replays a run). Takes about 4 to 6 minutes on a busy 2-core machine: marked slow.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fault_support import (
    BIN,
    TERMINAL,
    Proc,
    RedisServer,
    Stack,
    base_env,
    free_port,
    runner_pids_of,
    start,
    wait_for,
    wait_ready,
)

from _support.postgres import conninfo, fresh_database
from kiln_service.stores.artifacts import LocalArtifactStore, list_attempts
from kiln_worker._job_dirs import is_orphaned

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "examples" / "mlp" / "mlp.tar.gz"
INPUTS = ROOT / "examples" / "mlp" / "example_inputs.npz"
JOBS = 6
#: how long the chaos goes on (it also stops once every job has ended)
CHAOS_SECONDS = 70.0
#: bound on the whole batch ending, from the first submission
BATCH_SECONDS = 480.0
ACTIONS = ("kill_child", "kill_worker", "restart_broker")


@contextlib.contextmanager
def chaos_database() -> Iterator[tuple[str, str]]:
    """A new, empty database on the PostgreSQL server: ``(SQLAlchemy url, conninfo)``."""
    with fresh_database("kiln_chaos") as url:
        yield url, conninfo(url)


@dataclass
class Chaos:
    """The stack under test, the processes it started, and what the chaos did."""

    root: Path
    redis: RedisServer
    conninfo: str
    env: dict[str, str]
    rng: random.Random
    url: str = ""
    api: Proc | None = None
    workers: dict[str, Proc] = field(default_factory=dict)
    every_proc: list[Proc] = field(default_factory=list)
    done: Counter[str] = field(default_factory=Counter)
    children_killed: set[str] = field(default_factory=set)
    _n: int = 0

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def start_worker(self, slot: str) -> Proc:
        self._n += 1
        proc = start(f"worker-{slot}-{self._n}", [
            str(BIN / "kiln-worker"), "--targets", "xla", "--concurrency", "1",
            "--hostname", f"chaos-{slot}@%h"], self.env, self.logs)
        self.every_proc.append(proc)
        self.workers[slot] = proc
        wait_for(lambda: "ready" in proc.log.read_text(errors="replace")
                 or proc.popen.poll() is not None, f"worker {slot} to be ready", timeout=180)
        assert proc.popen.poll() is None, proc.tail()
        return proc

    def kill_worker(self) -> None:
        """SIGKILL one worker's whole process group (a lost machine), then start it again."""
        slot = self.rng.choice(sorted(self.workers))
        proc = self.workers[slot]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.popen.pid, signal.SIGKILL)
        proc.popen.wait()
        time.sleep(self.rng.uniform(0.5, 3.0))
        self.start_worker(slot)
        self.done["kill_worker"] += 1

    def kill_child(self, job_ids: list[str]) -> None:
        """SIGKILL the compile process of one running job (never twice for the same job)."""
        def running() -> list[tuple[str, int]]:
            return [(job_id, pid) for job_id in job_ids if job_id not in self.children_killed
                    for pid in runner_pids_of(job_id)]

        with contextlib.suppress(AssertionError):
            job_id, pid = self.rng.choice(wait_for(running, "a compile process", timeout=20))
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self.children_killed.add(job_id)
            self.done["kill_child"] += 1
            return
        self.done["kill_child_missed"] += 1

    def restart_broker(self) -> None:
        """SIGKILL our redis-server (what was queued is lost) and start it on the same port."""
        self.redis.kill()
        time.sleep(self.rng.uniform(0.5, 3.0))
        self.redis.start()
        self.done["restart_broker"] += 1

    def row(self, job_id: str) -> dict[str, Any]:
        with psycopg.connect(self.conninfo, autocommit=True) as conn, \
                conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
            row = cur.execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()
        assert row is not None, job_id
        return dict(row)

    def job_folders(self) -> list[Path]:
        """``kiln-job-*`` folders in the folders the workers (and their children) write to,
        but for the folder of a compile process that a live worker keeps waiting for its next
        job (``kiln-job-warm-*`` of an owner still running)."""
        places = (self.root / "work", self.root / "tmp")
        return sorted(p for place in places if place.is_dir() for p in place.glob("kiln-job-*")
                      if not (p.name.startswith("kiln-job-warm-") and not is_orphaned(p.name)))

    def worker_log_text(self) -> str:
        return "".join(p.read_text(errors="replace")
                       for p in sorted(self.logs.glob("worker-*.log")))

    def stop(self) -> None:
        for proc in reversed(self.every_proc):
            proc.stop(grace=5)
        if self.api is not None:
            self.api.stop()


@pytest.fixture
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chaos]:
    seed = int(os.environ.get("KILN_CHAOS_SEED") or secrets.randbits(32))
    print(f"\nchaos seed {seed} (KILN_CHAOS_SEED={seed} replays the pauses and targets)")
    root = tmp_path_factory.mktemp("chaos")
    for sub in ("work", "tmp", "data"):
        (root / sub).mkdir()
    redis = RedisServer(root)
    with chaos_database() as (db_url, db_conninfo):
        env = base_env(
            KILN_DATA_DIR=str(root / "data"), KILN_DATABASE_URL=db_url,
            KILN_BROKER_URL=redis.url, KILN_STORAGE_URL=f"file://{root / 'artifacts'}",
            KILN_WORKER_WORK_DIR=str(root / "work"), TMPDIR=str(root / "tmp"),
            KILN_WORKER_POLL_SECONDS="0.3", KILN_WORKER_KILL_GRACE_SECONDS="1",
            KILN_WORKER_LOG_FLUSH_SECONDS="0.3", KILN_WORKER_LEASE_SECONDS="8",
            KILN_RECONCILE_INTERVAL_SECONDS="2", KILN_REQUEUE_AFTER_SECONDS="6",
            KILN_WORKER_TEST_HOOK_CHILD_SLEEP_SECONDS="2", KILN_WORKER_ADVERTISE_SECONDS="2",
            # Every kill costs the job an attempt; the chaos, not the model, is at fault.
            KILN_MAX_ATTEMPTS="15",
        )
        state = Chaos(root, redis, db_conninfo, env, random.Random(seed))
        try:
            migrate = subprocess.run([str(BIN / "kiln-service"), "migrate"], env=env,
                                     capture_output=True, text=True, timeout=120)
            assert migrate.returncode == 0, migrate.stderr
            redis.start()
            port = free_port()
            state.api = start("api", [str(BIN / "kiln-service"), "serve", "--port", str(port)],
                              env, state.logs)
            stack = Stack(f"http://127.0.0.1:{port}", [state.api], root / "data")
            wait_ready(stack.url, [state.api], timeout=180)
            for slot in ("a", "b"):
                state.start_worker(slot)
            stack.client.close()
            state.url = stack.url
            yield state
        finally:
            state.stop()
            redis.kill()


def _run_chaos(chaos: Chaos, stack: Stack, job_ids: list[str]) -> None:
    """Cycle through the actions with random pauses until time is up or every job ended."""
    until = time.monotonic() + CHAOS_SECONDS
    turn = 0
    while time.monotonic() < until:
        if all(_status(stack, job_id) in TERMINAL for job_id in job_ids):
            break
        time.sleep(chaos.rng.uniform(2.0, 6.0))
        action = ACTIONS[turn % len(ACTIONS)]
        turn += 1
        if action == "kill_child":
            chaos.kill_child(job_ids)
        elif action == "kill_worker":
            chaos.kill_worker()
        else:
            chaos.restart_broker()
        print(f"  t+{CHAOS_SECONDS - (until - time.monotonic()):5.1f} s  {action}")


def _status(stack: Stack, job_id: str) -> str:
    try:
        return str(stack.job(job_id)["status"])
    except Exception:  # the API may answer 503 while the broker is down: not an end
        return "unknown"


def test_chaos_every_job_succeeds_once_and_nothing_is_left(chaos: Chaos, tmp_path: Path) -> None:
    stack = Stack(chaos.url, [], chaos.root / "data")
    started = time.monotonic()
    job_ids = [stack.submit(MODEL, INPUTS, name=f"chaos-{i}")["id"] for i in range(JOBS)]
    _run_chaos(chaos, stack, job_ids)
    print(f"chaos done after {time.monotonic() - started:.0f} s: {dict(chaos.done)}")
    assert chaos.done["kill_worker"] >= 1 and chaos.done["restart_broker"] >= 1, chaos.done
    assert chaos.done["kill_child"] >= 1, f"no compile process was ever caught: {chaos.done}"

    stack.procs = [p for p in (chaos.api, *chaos.workers.values()) if p is not None]  # for logs
    left = BATCH_SECONDS - (time.monotonic() - started)
    jobs = {job_id: stack.wait(job_id, timeout=max(left, 30)) for job_id in job_ids}
    print(f"batch ended after {time.monotonic() - started:.0f} s; attempts "
          f"{sorted(job['attempts'] for job in jobs.values())}")
    for job_id, job in jobs.items():
        assert job["status"] == "succeeded", (job_id, job.get("failure"))
        _assert_published_once(chaos, stack, job, tmp_path / job_id)

    store = LocalArtifactStore(chaos.root / "artifacts")
    for job_id in job_ids:
        published = chaos.row(job_id)["published_attempt"]
        # The reconciler (every 2 s here) deletes what killed attempts stored.
        wait_for(lambda j=job_id, p=published: list_attempts(store, j) == {p},
                 f"only the published attempt's outputs of {job_id} to remain", timeout=60)
        assert runner_pids_of(job_id) == [], f"a compile process of {job_id} is still alive"
    # Worker start and the reconciler remove the folders of jobs whose process is gone.
    with contextlib.suppress(AssertionError):
        wait_for(lambda: not chaos.job_folders(), "job folders to be swept", timeout=60)
    left_behind = [p.name for p in chaos.job_folders()]
    assert left_behind == [], f"job folders left behind: {left_behind}"
    print(f"all {JOBS} jobs succeeded once in {time.monotonic() - started:.0f} s")


def _assert_published_once(chaos: Chaos, stack: Stack, job: dict[str, Any], work: Path) -> None:
    """One fenced finish, the last attempt published, each artifact once and intact."""
    row = chaos.row(job["id"])
    assert row["published_attempt"] == row["fence"], row
    finishes = chaos.worker_log_text().count(f"job {job['id']} finished: succeeded")
    assert finishes == 1, f"job {job['id']} finished {finishes} times"
    names = [a["name"] for a in job["artifacts"]]
    assert sorted(names) == sorted(set(names)), names
    assert {"compiled_model.tar.gz", "report.json", "compile.log"} <= set(names)
    work.mkdir(parents=True)
    for artifact in job["artifacts"]:
        data = stack.download(job["id"], artifact["name"], work / artifact["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == artifact["sha256"], artifact["name"]
        assert len(data) == artifact["size"]
