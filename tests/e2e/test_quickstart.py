"""README command (1), for real: ``scripts/quickstart.sh`` installs, starts ``kiln-service up``,
compiles the bundled example through the API with curl, downloads, loads and compares it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """The quickstart's data dir; whatever service it started there is stopped afterwards."""
    data = tmp_path / "kiln-data"
    yield data
    subprocess.run(["bash", str(ROOT / "scripts" / "quickstart.sh"), "--stop", "--data-dir",
                    str(data)], capture_output=True, timeout=120)
    pid_file = data / "kiln-service.pid"
    if pid_file.exists():  # --stop failed: make sure by pid
        pid = int(pid_file.read_text())
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_quickstart_ends_with_a_succeeded_job_and_a_matching_model(data_dir: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "quickstart.sh"), "--port", str(port),
                           "--data-dir", str(data_dir)],
                          capture_output=True, text=True, env=env, timeout=900, cwd="/")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    job = json.loads((data_dir / "quickstart" / "job.json").read_text())
    assert job["status"] == "succeeded"
    assert job["id"] in proc.stdout and "(succeeded)" in proc.stdout
    assert f"http://127.0.0.1:{port}/docs" in proc.stdout
    check = json.loads((data_dir / "quickstart" / "check.json").read_text())
    assert check["match"] is True
    assert "outputs match the original" in output
    assert (data_dir / "quickstart" / "compiled" / "compiled_model" / "saved_model.pb").is_file()

    # Auth is on for a newcomer: `up` wrote a first key (owner-only) that the script used.
    key_file = data_dir / "api-key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    url = f"http://127.0.0.1:{port}/v1/jobs/{job['id']}"
    assert httpx.get(url, timeout=30).status_code == 401
    with_key = httpx.get(url, headers={"Authorization": f"Bearer {key_file.read_text().strip()}"},
                         timeout=30)
    assert with_key.status_code == 200 and with_key.json()["status"] == "succeeded"

    pid = int((data_dir / "kiln-service.pid").read_text())
    stop = subprocess.run(["bash", str(ROOT / "scripts" / "quickstart.sh"), "--stop",
                           "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=120)
    assert stop.returncode == 0, stop.stderr
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(f"/proc/{pid}").exists()
