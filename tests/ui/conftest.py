"""Fixtures of the dashboard tests: a real ``kiln-service up`` and Debian's headless Chromium.

The service runs with its embedded defaults and auth on, in its own data folder; a second
tenant's key is created in its job store. Chromium is driven by Playwright (the browser is the
system's ``chromium`` package, installed by ``scripts/test.sh``; Playwright downloads nothing).
Screenshots go to ``$KILN_UI_SCREENSHOTS`` (default ``.artifacts/ui-screenshots`` at the root).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ui_support import BIN, CHROMIUM, CHROMIUM_ARGS, ROOT, SLOW_SECONDS, Dashboard

from _support.processes import free_port, quiet_env, start, wait_ready


@pytest.fixture(scope="session")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    data_dir = tmp_path_factory.mktemp("kiln-ui")
    port = free_port()
    env = quiet_env(KILN_WORKER_TEST_HOOK_CHILD_SLEEP_SECONDS=str(SLOW_SECONDS))
    service = start("kiln-ui-service", [str(BIN / "kiln-service"), "up", "--port", str(port),
                                        "--data-dir", str(data_dir)], env, data_dir.parent)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, [service], timeout=240)
        from kiln_service.stores.jobs import JobStore

        store = JobStore(f"sqlite:///{data_dir / 'kiln.db'}")
        other = store.create_api_key(tenant="other-team", name="ui test").key
        store.dispose()
        yield Dashboard(url, data_dir, (data_dir / "api-key").read_text().strip(), other)
    finally:
        service.stop(grace=30)


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
