"""The compile child's limits, read back from inside a real child process (no TensorFlow)."""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

from kiln_worker._supervise import ChildProcess, child_environment
from kiln_worker.config import WorkerSettings

PROBE = """
import json, os, resource
names = ["RLIMIT_AS", "RLIMIT_FSIZE", "RLIMIT_NPROC", "RLIMIT_CPU", "RLIMIT_CORE"]
print(json.dumps({"limits": {n: resource.getrlimit(getattr(resource, n))[0] for n in names},
                  "env": sorted(os.environ), "cwd": os.getcwd()}))
"""


def _run(argv: list[str], tmp: Path, rlimits: dict[int, int], env: dict[str, str] | None = None
         ) -> tuple[int, list[str]]:
    child = ChildProcess(argv, env=env or child_environment(tmp), cwd=tmp, rlimits=rlimits)
    deadline = time.monotonic() + 60
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [line for stream, line in child.finish() if stream == "stdout"]
    return int(child.proc.returncode), lines


def test_default_limits_reach_the_child_with_a_scrubbed_environment(
        tmp_path: Path) -> None:
    secrets = {"AWS_SECRET_ACCESS_KEY": "x", "KILN_DATABASE_URL": "postgresql://u:p@h/db",
               "DATABASE_URL": "postgresql://u:p@h/db", "KILN_BROKER_URL": "redis://h"}
    env = child_environment(tmp_path, {"PATH": "/usr/bin:/bin", **secrets})
    options = WorkerSettings()
    status, lines = _run([sys.executable, "-c", PROBE], tmp_path, options.child_rlimits(120), env)
    assert status == 0, lines
    seen = json.loads(lines[-1])
    limits = seen["limits"]
    # No address-space cap: TensorFlow reserves far more than it uses (memory is a cgroup's).
    assert limits["RLIMIT_AS"] == resource.getrlimit(resource.RLIMIT_AS)[0]
    assert limits["RLIMIT_FSIZE"] == options.child_max_file_bytes
    assert limits["RLIMIT_CORE"] == 0
    assert limits["RLIMIT_CPU"] >= 120  # a backstop behind the wall-clock limit
    hard_nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    want_nproc = options.child_max_processes if hard_nproc == resource.RLIM_INFINITY \
        else min(hard_nproc, options.child_max_processes or hard_nproc)
    assert limits["RLIMIT_NPROC"] == want_nproc
    assert not set(secrets) & set(seen["env"])
    assert seen["cwd"] == str(tmp_path)


def test_file_size_limit_stops_a_child_writing_too_much(tmp_path: Path) -> None:
    writer = ("import os\nf = open('big', 'wb')\n"
              "try:\n    f.write(b'x' * 3_000_000); f.flush()\n"
              "except OSError as e:\n    print('refused', e.errno)\n")
    status, lines = _run([sys.executable, "-c", writer], tmp_path,
                         {resource.RLIMIT_FSIZE: 1_000_000})
    # Python ignores SIGXFSZ, so the write fails with EFBIG instead of killing the child.
    assert status == 0 and lines and lines[-1] == "refused 27", lines
    assert (tmp_path / "big").stat().st_size <= 1_000_000


def test_cpu_limit_kills_a_spinning_child_with_sigxcpu(tmp_path: Path) -> None:
    status, _ = _run([sys.executable, "-c", "while True: pass"], tmp_path,
                     {resource.RLIMIT_CPU: 1})
    assert status in (-24, -9)  # SIGXCPU at the soft limit (SIGKILL if it were ignored)


def test_no_nproc_limit_when_a_pids_cgroup_counts_the_compile() -> None:
    options = WorkerSettings()
    assert resource.RLIMIT_NPROC in options.child_rlimits(120)
    with_group = options.child_rlimits(120, pids_cgroup=True)
    assert resource.RLIMIT_NPROC not in with_group and resource.RLIMIT_AS not in with_group
