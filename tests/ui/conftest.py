"""Fixtures of the dashboard tests: a real ``kiln-service up`` and Debian's headless Chromium.

The service runs with its embedded defaults and auth on, in its own data folder; a second
tenant's key is created in its job store. Chromium is driven by Playwright (the browser is the
system's ``chromium`` package, installed by ``scripts/test.sh``; Playwright downloads nothing).
Screenshots go to ``$KILN_UI_SCREENSHOTS`` (default ``.artifacts/ui-screenshots`` at the root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.client.conftest import TF_ENV, _service_command, _stop, _wait_ready, free_port

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: flags for a root, offline, headless Chromium (no background calls to hosts we cannot reach)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]
#: the worker sleeps this long before tracing, so a job can be cancelled while it runs
SLOW_SECONDS = 4


@dataclass
class Dashboard:
    """The running service and two tenants' keys."""

    url: str
    data_dir: Path
    key: str
    other_key: str


@pytest.fixture(scope="session")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    command = _service_command()
    if command is None:
        pytest.skip("the `kiln-service` command is not installed (uv sync --all-packages)")
    data_dir = tmp_path_factory.mktemp("kiln-ui")
    log = data_dir.parent / "kiln-ui-service.log"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    env.update(TF_ENV, KILN_WORKER_TEST_HOOK_CHILD_SLEEP_SECONDS=str(SLOW_SECONDS))
    with log.open("wb") as out:
        proc = subprocess.Popen([*command, "up", "--port", str(port), "--data-dir", str(data_dir)],
                                stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, url, log)
        from kiln_service.stores.jobs import JobStore

        store = JobStore(f"sqlite:///{data_dir / 'kiln.db'}")
        other = store.create_api_key(tenant="other-team", name="ui test").key
        store.dispose()
        yield Dashboard(url, data_dir, (data_dir / "api-key").read_text().strip(), other)
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: scripts/test.sh installs Debian's chromium package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    folder = Path(os.environ.get("KILN_UI_SCREENSHOTS", ROOT / ".artifacts" / "ui-screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder
