"""Acceptance: a schemathesis run over the running service's own OpenAPI document finds no 5xx.

The service runs for real (``kiln-service serve`` on a loopback port, embedded SQLite job store,
filesystem broker, local artifacts) and the ``schemathesis`` CLI fuzzes every operation: examples,
coverage, fuzzing and stateful phases, 30 examples per operation, fixed seed. Twice: with auth
explicitly off, and with auth on and a valid API key header (made by ``kiln-service keys create``).

Asserted: the ``not_a_server_error`` and ``response_schema_conformance`` checks pass (no 5xx;
documented responses match their schemas), and the server logged no unhandled error.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from _support.processes import BIN, free_port, start, wait_ready

CHECKS = (
    "not_a_server_error,response_schema_conformance,status_code_conformance,"
    "content_type_conformance"
)


def _env(data_dir: Path, auth: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    return {**env, "KILN_DATA_DIR": str(data_dir), "KILN_AUTH": auth}


@pytest.fixture(params=["off", "on"])
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, list[str], Path]]:
    """A running service; yields its base URL, the schemathesis header options and its log."""
    auth: str = request.param
    env = _env(tmp_path / "kiln", auth)
    subprocess.run([str(BIN / "kiln-service"), "migrate"], env=env, check=True,
                   capture_output=True, timeout=120)
    headers: list[str] = []
    if auth == "on":
        out = subprocess.run([str(BIN / "kiln-service"), "keys", "create", "--tenant", "fuzz"],
                             env=env, check=True, capture_output=True, text=True, timeout=120).stdout
        key = out.strip().splitlines()[-1].split()[-1]
        headers = ["--header", f"Authorization: Bearer {key}"]
    port = free_port()
    proc = start("serve", [str(BIN / "kiln-service"), "serve", "--port", str(port),
                           "--log-level", "warning"], env, tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, [proc], path="/livez")
        yield url, headers, proc.log
    finally:
        proc.stop(grace=20)


def test_fuzz_openapi_finds_no_server_error(service: tuple[str, list[str], Path],
                                            tmp_path: Path) -> None:
    url, headers, log = service
    if headers:  # the key works: the run below is authenticated, not a wall of 401s
        key = headers[1].split()[-1]
        assert httpx.get(f"{url}/v1/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    cmd = [str(BIN / "schemathesis"), "run", f"{url}/openapi.json", "--checks", CHECKS,
           "--max-examples", "30", "--seed", "20261125", "--request-timeout", "60",
           "--generation-database", "none", "--report-dir", str(tmp_path / "report"), *headers]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    summary = proc.stdout[-6000:]
    assert proc.returncode == 0, summary
    selected = re.search(r"Selected: (\d+)/(\d+)", summary)
    tested = re.search(r"Tested: (\d+)", summary)
    assert selected and tested, summary
    assert int(tested.group(1)) == int(selected.group(2)) >= 11, summary  # every operation ran
    served = log.read_text(errors="replace")
    assert "unhandled error" not in served and "Traceback" not in served, served[-6000:]
