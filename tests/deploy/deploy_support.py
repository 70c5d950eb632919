"""Helpers shared by the deployment tests (processes on loopback, ports, environment).

Imported as ``deploy_support`` (pytest puts this folder on ``sys.path``; the name is unique).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from _support.processes import free_port, stop_group

__all__ = ["REPO", "S3_ENV", "TESTED_COMMANDS", "free_port", "stop_process", "wait_http"]

REPO = Path(__file__).resolve().parents[2]
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "kiln-test",
    "AWS_SECRET_ACCESS_KEY": "kiln-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """Stop a process this suite started (its own process group), by pid."""
    stop_group(proc, term_group=True)


def wait_http(url: str, proc: subprocess.Popen[Any], what: str, attempts: int = 240) -> None:
    """Poll ``url`` until it answers; fail with the process's output if it exits first."""
    for _ in range(attempts):
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"{what} exited with {proc.returncode} before answering:\n{out}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.25)
    stop_process(proc)
    pytest.fail(f"{what} did not answer on {url}")


#: The Kiln commands the deployment tests run as processes, by docker-compose service: the
#: compose file must use exactly these (tests/deploy/test_compose.py), and
#: tests/deploy/test_scale_out.py starts each of them.
TESTED_COMMANDS: dict[str, list[str]] = {
    "migrate": ["kiln-service", "migrate"],
    "api": ["kiln-service", "serve"],
    "worker-xla": ["kiln-worker", "--targets", "xla"],
    "worker-inf1": ["kiln-worker", "--targets", "inf1"],
}
