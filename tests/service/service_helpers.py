"""Helpers shared by the service tests (a uniquely named module: other test folders have a
``conftest`` and ``test_compile`` of their own)."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from kiln_client.problem_codes import ProblemCode
from kiln_service.config import Settings


def make_tar(src: Path, dest: Path, *, folder: str | None = "model", gz: bool = True) -> Path:
    """Archive ``src`` as ``dest`` (tar or tar.gz) under ``folder`` (or at the root)."""
    with tarfile.open(dest, "w:gz" if gz else "w") as tar:
        for path in sorted(src.rglob("*")):
            rel = path.relative_to(src).as_posix()
            tar.add(path, arcname=f"{folder}/{rel}" if folder else rel, recursive=False)
    return dest


def make_zip(src: Path, dest: Path, *, folder: str | None = None) -> Path:
    """Archive ``src`` as a zip under ``folder`` (or at the root)."""
    with zipfile.ZipFile(dest, "w") as zf:
        for path in sorted(src.rglob("*")):
            if path.is_file():
                rel = path.relative_to(src).as_posix()
                zf.write(path, f"{folder}/{rel}" if folder else rel)
    return dest


def npz_bytes(**arrays: Any) -> bytes:
    """Return an ``.npz`` of ``arrays`` (object arrays are pickled by numpy on save)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def upload_files(model: bytes, inputs: bytes | None = None) -> dict[str, Any]:
    files: dict[str, Any] = {"model": ("model.tar.gz", model, "application/gzip")}
    if inputs is not None:
        files["example_inputs"] = ("inputs.npz", inputs, "application/octet-stream")
    return files


def good_inputs(**override: Any) -> bytes:
    arrays = {"x": np.ones((2, 3), np.float32), "ids": np.ones((2, 5, 4), np.int32)}
    arrays.update(override)
    return npz_bytes(**arrays)


def assert_nothing_stored(app: Any, settings: Settings) -> None:
    """No job row, no file under the artifact store or staging, no broker message."""
    services = app.state.services
    assert services.job_store.list_jobs().items == []
    artifacts = settings.data_dir / "artifacts"
    assert [p for p in artifacts.rglob("*") if p.is_file()] == []
    assert [p for p in settings.staging_dir.rglob("*") if p.is_file()] == []
    data = settings.broker_dir / "data"
    assert not data.exists() or list(data.iterdir()) == []


def assert_problem(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = resp.json()
    assert body["status"] == status and body["code"] == code, body
    assert code in {c.value for c in ProblemCode}, f"{code!r} is not in the ProblemCode catalogue"
    assert body["type"].endswith(f"/docs/errors#{code}"), body["type"]
    assert body["request_id"] == resp.headers["x-request-id"]
    assert body["detail"]
    return body
