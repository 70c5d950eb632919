"""Fixtures of the SDK tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from client_service import TF_ENV, RunningService

import kiln_client._client
from _support.processes import NO_COMPILE_CACHE, free_port, stop_group


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record retry sleeps instead of sleeping."""
    recorded: list[float] = []

    async def fake_async_sleep(seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr(kiln_client._client, "_sleep", recorded.append)
    monkeypatch.setattr(kiln_client._client, "_async_sleep", fake_async_sleep)
    return recorded


@pytest.fixture(autouse=True)
def _no_kiln_env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests must not pick up the developer's KILN_URL / KILN_API_KEY; contract tests get
    the API key the running service wrote (auth is on, as for any newcomer's ``kiln-service up``)."""
    monkeypatch.delenv("KILN_URL", raising=False)
    monkeypatch.delenv("KILN_API_KEY", raising=False)
    if "kiln_service" in request.fixturenames:
        service: RunningService = request.getfixturevalue("kiln_service")
        monkeypatch.setenv("KILN_API_KEY", service.api_key)


# --- a real running service (contract tests) -------------------------------------------------



_START_SECONDS = 180


def _service_command() -> list[str] | None:
    script = Path(sys.executable).parent / "kiln-service"
    if script.exists():
        return [str(script)]
    found = shutil.which("kiln-service")
    return [found] if found else None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the process group we started (API + worker + compile children), by its id."""
    stop_group(proc, grace=30, term_group=True)


@pytest.fixture(scope="session")
def kiln_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    """Start ``kiln-service up --port <free> --data-dir <tmp>``; skip only if it does not exist."""
    command = _service_command()
    if command is None:
        pytest.skip("the `kiln-service` command is not installed yet (uv sync --all-packages)")
    data_dir = tmp_path_factory.mktemp("kiln-data")
    log = data_dir.parent / "kiln-service.log"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    env.update(TF_ENV, **NO_COMPILE_CACHE)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*command, "up", "--port", str(port), "--data-dir", str(data_dir)],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, url, log)
        yield RunningService(url=url, data_dir=data_dir, log=log)
    finally:
        _stop(proc)


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + _START_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = log.read_text(errors="replace")
            if "No module named" in text or "invalid choice: 'up'" in text:
                pytest.skip(f"`kiln-service up` is not implemented yet: {text.strip().splitlines()[-1]}")
            raise RuntimeError(f"kiln-service up exited with {proc.returncode}:\n{text[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"kiln-service up not ready after {_START_SECONDS}s:\n{log.read_text()[-3000:]}")
