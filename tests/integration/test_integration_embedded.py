"""One job end to end on the embedded defaults: ``kiln-service up`` (filesystem broker, SQLite,
local artifact directory), then a clean stop that takes the worker with it."""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path

import pytest
from integration_support import Stack, check_compiled

pytestmark = pytest.mark.integration


def test_embedded_defaults_compile_and_serve_the_model(
    embedded_stack: Stack, zoo: Path, tmp_path: Path
) -> None:
    job = embedded_stack.submit(zoo / "mlp" / "model.tar.gz", zoo / "mlp" / "example_inputs.npz")
    done = embedded_stack.wait(job["id"])
    assert done["status"] == "succeeded", done["failure"]
    data = embedded_stack.data_dir
    assert (data / "kiln.db").is_file()  # SQLite job store
    assert (data / "broker").is_dir()  # filesystem transport
    # each attempt stores under its own keys; the published one is the last (attempts = fence)
    stored = (data / "artifacts" / "jobs" / job["id"] / f"attempt-{done['attempts']}"
              / "compiled_model.tar.gz")
    archive = embedded_stack.download(job["id"], "compiled_model.tar.gz", tmp_path / "c.tgz")
    assert archive.read_bytes() == stored.read_bytes()
    sha = {a["name"]: a["sha256"] for a in done["artifacts"]}["compiled_model.tar.gz"]
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == sha
    check = check_compiled(archive, zoo / "mlp" / "model", zoo / "mlp" / "example_inputs.npz",
                           tmp_path / "check")
    assert check["shapes_equal"] and check["max_abs_diff"] <= 1e-5 + 1e-3 * check["max_abs_output"]


def test_up_stops_its_worker_on_sigterm(embedded_stack: Stack) -> None:
    up = embedded_stack.procs[0].popen
    workers = [p for p in _children(up.pid) if b"kiln-worker" in _cmdline(p)]
    assert workers, "kiln-service up started no kiln-worker"
    os.kill(up.pid, signal.SIGTERM)
    assert up.wait(timeout=60) == 0
    for pid in workers:
        assert not _alive(pid)


def _children(pid: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
            if ppid == pid:
                found.append(int(proc.name))
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
