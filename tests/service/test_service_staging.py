"""Staging leftovers of a crashed API process are swept at start; live uploads are not."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from kiln_service.main import process_staging_dir, sweep_staging

HOST = socket.gethostname()


def _folder(staging: Path, name: str, *, age_seconds: float = 0) -> Path:
    folder = staging / name
    folder.mkdir(parents=True)
    (folder / "upload.part").write_bytes(b"x" * 10)
    old = time.time() - age_seconds
    os.utime(folder, (old, old))
    return folder


def test_process_folder_is_per_host_and_pid(tmp_path: Path) -> None:
    assert process_staging_dir(tmp_path) == tmp_path / f"{HOST}.{os.getpid()}"


def test_dead_process_folder_goes_live_ones_stay_even_when_old(tmp_path: Path) -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    dead = _folder(tmp_path, f"{HOST}.{finished.stdout.strip()}")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = _folder(tmp_path, f"{HOST}.{sleeper.pid}", age_seconds=48 * 3600)
        mine = _folder(tmp_path, f"{HOST}.{os.getpid()}", age_seconds=48 * 3600)
        assert sweep_staging(tmp_path) == 1
        assert not dead.exists()
        assert live.exists() and mine.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_unknown_owners_go_only_when_old(tmp_path: Path) -> None:
    fresh = _folder(tmp_path, "other-host.123")
    old = _folder(tmp_path, "other-host.456", age_seconds=7 * 3600)
    loose = tmp_path / "legacy-upload.part"
    loose.write_bytes(b"x")
    os.utime(loose, (time.time() - 7 * 3600,) * 2)
    assert sweep_staging(tmp_path) == 2
    assert fresh.exists() and not old.exists() and not loose.exists()
