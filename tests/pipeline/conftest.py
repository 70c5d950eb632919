"""Fixtures of the pipeline tests (webhooks, live events, logs, metrics): real processes on
loopback, a real SavedModel built once in a subprocess (the test process never imports TF)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator

import numpy as np
import pytest
from pipeline_support import ROOT, TF_ENV, Api, api_env, free_port

from _support.postgres import fresh_database


@pytest.fixture(scope="session")
def model_tgz(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A small Keras SavedModel (input ``x``: float32 [batch, 3]) as .tar.gz bytes."""
    out = tmp_path_factory.mktemp("model") / "m"
    code = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
            "from model_factory import save_model; save_model(Path(sys.argv[2]), seed=3)")
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT / "tests" / "client"), str(out)],
                          env={**os.environ, **TF_ENV}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(out, arcname="model")
    return buf.getvalue()


@pytest.fixture(scope="session")
def inputs_npz() -> bytes:
    """Example inputs for ``model_tgz``."""
    buf = io.BytesIO()
    np.savez(buf, x=np.ones((1, 3), np.float32))
    return buf.getvalue()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """``kiln-service serve`` on SQLite, webhooks to loopback allowed, fast retries (one per module)."""
    tmp_path = tmp_path_factory.mktemp("api")
    env = api_env(tmp_path / "kiln", KILN_WEBHOOK_ALLOW_PRIVATE_URLS="true",
                  KILN_WEBHOOK_RETRY_BASE_SECONDS="0.2", KILN_WEBHOOK_GIVE_UP_SECONDS="8")
    server = Api(f"http://127.0.0.1:{free_port()}", env, tmp_path / "api.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database ``kiln_test_pipe_<random>`` (dropped afterwards)."""
    with fresh_database("kiln_test_pipe") as url:
        yield url
