"""Services the fault-injection tests own and break: Redis, PostgreSQL, a tmpfs, API, worker.

Everything here is started by these tests, on loopback and free ports, and stopped by pid:
``redis-server`` (no persistence, so a restart loses queued messages for real), a private
PostgreSQL cluster (``initdb`` + ``pg_ctl`` as the ``postgres`` OS user: initdb refuses root),
a small tmpfs as the artifact store (to fill the disk for real), then ``kiln-service serve`` and
``kiln-worker`` against them. The machine's shared Redis and PostgreSQL are never touched.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from integration_support import (  # noqa: E402
    BIN,
    TERMINAL,
    ZOO_SCRIPT,
    Proc,
    Stack,
    base_env,
    free_port,
    runner_pids,
    start,
    wait_ready,
)

runner_pids_of = runner_pids

BOMB_SCRIPT = r"""
import os, sys, tarfile
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import numpy as np, tensorflow as tf

class Bomb(tf.Module):
    # Allocates n x 2^20 floats (8 GiB with n=2048): n comes from the example inputs, so nothing looks odd up front.
    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x"),
                                  tf.TensorSpec([], tf.int32, name="n")])
    def serve(self, x, n):
        big = tf.ones(tf.stack([n, 1048576]), tf.float32)
        return {"y": x + tf.reduce_sum(big)}

out = sys.argv[1]
m = Bomb()
tf.saved_model.save(m, out + "/model", signatures={"serving_default": m.serve})
with tarfile.open(out + "/model.tar.gz", "w:gz") as tar:
    tar.add(out + "/model", arcname="model")
np.savez(out + "/example_inputs.npz", x=np.ones((1, 4), np.float32), n=np.array(2048, np.int32))
"""

PG_BIN = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))[-1]).parent \
    if glob.glob("/usr/lib/postgresql/*/bin/initdb") else None


def wait_for(check: Callable[[], Any], what: str, timeout: float = 120.0, every: float = 0.2) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


class RedisServer:
    """A ``redis-server`` of our own, without persistence: a restart empties it."""

    def __init__(self, workdir: Path) -> None:
        self.port, self.workdir = free_port(), workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(self._pong, "redis-server to answer", timeout=30)

    def _pong(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return bool(sock.recv(16).startswith(b"+PONG"))
        return False

    def kill(self) -> None:
        """SIGKILL our redis-server (by pid) and wait for it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


class PostgresCluster:
    """A private PostgreSQL cluster in a temporary folder owned by the ``postgres`` user."""

    def __init__(self, workdir: Path) -> None:
        assert PG_BIN is not None, "PostgreSQL server binaries not found under /usr/lib/postgresql"
        self.bin: Path = PG_BIN
        self.port, self.dir = free_port(), workdir
        self.data = workdir / "data"
        workdir.mkdir(parents=True, exist_ok=True)
        shutil.chown(workdir, "postgres", "postgres")
        workdir.chmod(0o700)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/kiln"

    def _as_postgres(self, *argv: str, timeout: float = 120) -> None:
        proc = subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True,
                              text=True, timeout=timeout, cwd=self.dir)
        assert proc.returncode == 0, f"{argv[0]} failed: {proc.stdout}{proc.stderr}"

    def init(self) -> None:
        self._as_postgres(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust",
                          "-U", "postgres", "--no-sync")
        self.start()
        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE kiln")

    def conninfo(self, db: str = "kiln") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={db}"

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts,
                          "-l", str(self.dir / "pg.log"), "-w", "start")

    def stop(self) -> None:
        """Stop the cluster now (fast shutdown: connections are cut)."""
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                          "stop")

    def postmaster_pid(self) -> int | None:
        pid_file = self.data / "postmaster.pid"
        return int(pid_file.read_text().split()[0]) if pid_file.exists() else None


class Tmpfs:
    """A small tmpfs mounted for the artifact store, so 'disk full' is the real ENOSPC."""

    def __init__(self, path: Path, size_mb: int) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
                       check=True, capture_output=True, timeout=30)

    def fill(self) -> Path:
        """Write a filler file until the filesystem is full; returns it."""
        filler = self.path / "filler"
        with open(filler, "wb") as out:
            chunk = b"\0" * (1 << 20)
            with contextlib.suppress(OSError):
                while True:
                    out.write(chunk)
                    out.flush()
        with contextlib.suppress(OSError), open(self.path / "filler2", "wb") as out:
            while True:  # the last few kilobytes too
                out.write(b"\0" * 4096)
                out.flush()
        return filler

    def free(self) -> None:
        for name in ("filler", "filler2"):
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True, timeout=30)


@dataclass
class FaultStack:
    """Our Redis, PostgreSQL and tmpfs, with an API and a worker on top that tests may kill."""

    root: Path
    redis: RedisServer
    pg: PostgresCluster
    disk: Tmpfs
    env: dict[str, str]
    api_port: int = field(default_factory=free_port)
    api: Proc | None = None
    worker: Proc | None = None
    stack: Stack | None = None
    _n: int = 0

    def start_api(self) -> Proc:
        self._n += 1
        self.api = start(f"api-{self._n}", [str(BIN / "kiln-service"), "serve", "--port",
                                           str(self.api_port)], self.env, self.root / "logs")
        return self.api

    def start_worker(self) -> Proc:
        self._n += 1
        self.worker = start(f"worker-{self._n}", [str(BIN / "kiln-worker"), "--targets", "xla",
                                                 "--concurrency", "1"], self.env, self.root / "logs")
        wait_for(lambda: "ready" in self.worker.log.read_text(errors="replace")  # type: ignore[union-attr]
                 or self.worker.popen.poll() is not None, "the worker to be ready")  # type: ignore[union-attr]
        assert self.worker.popen.poll() is None, self.worker.tail()
        return self.worker

    def client(self) -> Stack:
        assert self.api is not None
        if self.stack is None:
            self.stack = Stack(f"http://127.0.0.1:{self.api_port}", [], self.root)
        self.stack.procs = [p for p in (self.api, self.worker) if p is not None]
        wait_ready(self.stack.url, [self.api])
        return self.stack

    def db(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.pg.conninfo(), autocommit=True)

    def job_row(self, job_id: str) -> dict[str, Any]:
        with self.db() as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
            row = cur.execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()
        assert row is not None, job_id
        return dict(row)

    def count_jobs(self) -> int:
        with self.db() as conn:
            row = conn.execute("SELECT count(*) FROM jobs").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        if self.stack is not None:
            self.stack.client.close()
        for proc in (self.worker, self.api):
            if proc is not None:
                proc.stop()


def build_models(out: Path) -> Path:
    """The MLP of the model zoo and a memory bomb, built in subprocesses (no TensorFlow here)."""
    zoo = subprocess.run([sys.executable, str(ZOO_SCRIPT), str(out), "mlp"], env=base_env(),
                         capture_output=True, text=True, timeout=300)
    assert zoo.returncode == 0, zoo.stderr[-3000:]
    (out / "bomb").mkdir()
    bomb = subprocess.run([sys.executable, "-c", BOMB_SCRIPT, str(out / "bomb")], env=base_env(),
                          capture_output=True, text=True, timeout=300)
    assert bomb.returncode == 0, bomb.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def faults() -> Iterator[FaultStack]:
    """A FaultStack for the module: fast leases and reconciler passes, a 2 GiB memory cgroup."""
    if os.geteuid() != 0:
        pytest.skip("the fault tests mount a tmpfs and run initdb as postgres: they need root")
    root = Path(tempfile.mkdtemp(prefix="kiln-faults-"))
    root.chmod(0o755)  # the postgres user must reach its cluster folder inside
    redis_server = RedisServer(root)
    pg = PostgresCluster(root / "pg")
    disk = Tmpfs(root / "artifacts", size_mb=48)
    stack: FaultStack | None = None
    try:
        redis_server.start()
        pg.init()
        env = base_env(
            KILN_AUTH="off", KILN_DATA_DIR=str(root / "data"), KILN_DATABASE_URL=pg.url,
            KILN_BROKER_URL=redis_server.url, KILN_STORAGE_URL=f"file://{disk.path}",
            KILN_WORKER_POLL_SECONDS="0.3", KILN_WORKER_KILL_GRACE_SECONDS="1",
            KILN_WORKER_LOG_FLUSH_SECONDS="0.3", KILN_WORKER_LEASE_SECONDS="6",
            KILN_RECONCILE_INTERVAL_SECONDS="2", KILN_REQUEUE_AFTER_SECONDS="8",
            KILN_WORKER_TEST_HOOK_CHILD_SLEEP_SECONDS="5",
            KILN_WORKER_CHILD_MAX_MEMORY_BYTES=str(2 * 2**30),
            KILN_WORKER_ADVERTISE_SECONDS="2",
        )
        migrate = subprocess.run([str(BIN / "kiln-service"), "migrate"], env=env,
                                 capture_output=True, text=True, timeout=120)
        assert migrate.returncode == 0, migrate.stderr
        stack = FaultStack(root, redis_server, pg, disk, env)
        stack.start_api()
        stack.start_worker()
        stack.client()
        yield stack
    finally:
        if stack is not None:
            stack.close()
        redis_server.kill()
        with contextlib.suppress(AssertionError, subprocess.SubprocessError):
            pg.stop()
        disk.unmount()
        shutil.rmtree(root, ignore_errors=True)


def terminal(stack: Stack, job_id: str, timeout: float = 240) -> dict[str, Any]:
    """Wait for the job to end (any terminal status)."""
    job: dict[str, Any] = stack.wait(job_id, timeout=timeout, until=TERMINAL)
    return job


def signal_pid(pid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    """Send ``sig`` to one process we started (or that one of ours started)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
