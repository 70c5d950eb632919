"""Suite-wide set-up: each pytest-xdist worker gets a Redis server of its own.

Tests that use Redis read ``KILN_TEST_REDIS_URL`` and pick a database number per module, which
they flush. Two xdist workers running two such modules at once would flush each other's
data, so every worker but the first starts a private ``redis-server`` on a free loopback port
and points ``KILN_TEST_REDIS_URL`` at it before any test module is imported. PostgreSQL needs
nothing: the tests create a fresh database each (``tests/_support/postgres.py``). The tracer's
timing cache is off (``KILN_TIMING_CACHE=off``) unless a test turns it on.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time

import pytest

_private: subprocess.Popen[bytes] | None = None
# Measured placement's timing cache stays off unless a test turns it on (with its own tmp_path):
# entries left by one test (or by the developer's own traces) would decide another's placement.
os.environ["KILN_TIMING_CACHE"] = "off"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_private_redis() -> str:
    global _private
    binary = shutil.which("redis-server")
    if binary is None:
        raise pytest.UsageError("redis-server is not installed; run the suite with scripts/test.sh")
    port = _free_port()
    folder = tempfile.mkdtemp(prefix="kiln-test-redis-")
    _private = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", folder, "--databases", "16"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError as exc:
            if time.monotonic() > deadline or _private.poll() is not None:
                raise pytest.UsageError(f"a private redis-server on port {port} did not start") from exc
            time.sleep(0.05)
    return f"redis://127.0.0.1:{port}"


def pytest_configure(config: pytest.Config) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker and worker != "gw0":
        os.environ["KILN_TEST_REDIS_URL"] = _start_private_redis()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _private is not None:
        _private.terminate()
        _private.wait(timeout=10)


#: directories whose session fixtures (services, built models, stacks) are costly: their tests
#: stay on one xdist worker; every other test file is a unit of its own
_SHARED_SESSION_DIRS = {"deploy", "integration", "pipeline", "service", "ui", "worker"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Group tests for ``--dist loadgroup``: a directory with costly session fixtures runs on
    one worker; other files spread over the workers one file at a time."""
    if config.getoption("dist", "no") == "no":  # one process: nothing to group
        return
    root = config.rootpath / "tests"
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        relative = item.path.relative_to(root) if item.path.is_relative_to(root) else item.path
        top = relative.parts[0] if len(relative.parts) > 1 else ""
        group = f"dir:{top}" if top in _SHARED_SESSION_DIRS else f"file:{relative}"
        item.add_marker(pytest.mark.xdist_group(group))
