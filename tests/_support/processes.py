"""Processes a test starts: free ports, a clean environment, start/stop by process group.

Every process is started in its own session, and stopped by its pid, then its group: never by
name, so that tests never touch processes they did not start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

__all__ = ["BIN", "NO_COMPILE_CACHE", "Proc", "free_port", "quiet_env", "run_script", "runner_pids", "start",
           "stop_group", "wait_ready"]

#: the folder of this interpreter's console scripts (``kiln-service``, ``kiln-worker``, ``kiln``)
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: Services started by tests compile every job: a test about compiling must not be answered from
#: the compile cache by an identical job of an earlier test (the cache's own tests turn it on).
NO_COMPILE_CACHE = {"KILN_CACHE_MAX_BYTES": "0"}


def quiet_env(**overrides: str) -> dict[str, str]:
    """This environment without ``KILN_*`` settings, TensorFlow quiet and on CPU, the compile
    cache off, plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    env.update(TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
               **NO_COMPILE_CACHE)
    env.update(overrides)
    return env


def stop_group(popen: subprocess.Popen[Any], grace: float = 15.0, *,
               term_group: bool = False) -> None:
    """SIGTERM ``popen`` (its whole group with ``term_group``), then SIGKILL its process group
    after ``grace`` seconds. The process must have been started in a session of its own."""
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            if term_group:
                os.killpg(popen.pid, signal.SIGTERM)
            else:
                popen.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, signal.SIGKILL)
    popen.wait()


@dataclass
class Proc:
    """A process this test session started (in its own session), with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM, then SIGKILL of its whole process group after ``grace`` seconds."""
        stop_group(self.popen, grace)

    def tail(self, lines: int = 40) -> str:
        """The end of its log, for failure messages."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def start(name: str, argv: Sequence[str], env: Mapping[str, str], logs: Path,
          cwd: Path | None = None) -> Proc:
    """Start ``argv`` in a new session with its output in ``logs/<name>.log``."""
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    with open(log, "ab") as out:
        popen = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, env=dict(env), cwd=cwd,
                                 start_new_session=True)
    return Proc(name, popen, log)


def wait_ready(url: str, procs: Sequence[Proc], timeout: float = 120.0,
               path: str = "/readyz") -> None:
    """Wait for ``url + path`` to answer 200; fail with the logs if a process dies first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}{path}", timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{url}{path} never answered 200:\n" + "\n".join(p.tail() for p in procs))


def run_script(script: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a Python script (a model builder, say) in a fresh interpreter; assert it succeeds."""
    proc = subprocess.run([sys.executable, str(script), *args], env=quiet_env(),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _adopted_by(cmdline: str) -> str | None:
    """The job that adopted the folder of a compile process started ahead (``--wait BOX``):
    the worker names it in ``job`` beside ``BOX`` (see ``kiln_worker._warm``)."""
    args = cmdline.split()
    if "--wait" not in args or args.index("--wait") + 1 >= len(args):
        return None
    try:
        return (Path(args[args.index("--wait") + 1]).parent / "job").read_text().strip()
    except OSError:
        return None


def runner_pids(job_id: str) -> list[int]:
    """Live compile children of ``job_id`` on this machine: the id is in their folder's name,
    or, for a process started ahead of its job, in the ``job`` file of the folder it waited in."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if "kiln_worker.runner" in cmdline and state != "Z" and (
                job_id in cmdline or _adopted_by(cmdline) == job_id):
            pids.append(int(proc.name))
    return pids
