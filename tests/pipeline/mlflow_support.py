"""A real MLflow tracking server on loopback, from PyPI, in a venv of its own.

``scripts/_services.sh``'s ``ensure_mlflow`` installs MLflow into ``.artifacts/mlflow-venv``
(``scripts/test.sh`` runs it; :func:`mlflow_bin` runs it when the venv is missing). Models are
registered over MLflow's REST API with plain httpx, as any client of the server could.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from _support.processes import free_port, start, wait_ready

__all__ = ["MlflowServer", "mlflow_bin", "mlflow_server"]

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".artifacts" / "mlflow-venv"


def mlflow_bin() -> Path:
    """The ``mlflow`` command of the test venv, installed first if missing."""
    command = VENV / "bin" / "mlflow"
    if not command.exists():
        subprocess.run(["bash", "-c", "source scripts/_services.sh && ensure_mlflow"], cwd=ROOT,
                       check=True, timeout=900)
    return command


class MlflowServer:
    """A running ``mlflow server``: its URL and REST helpers."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=120)

    def call(self, method: str, endpoint: str, **kwargs: Any) -> dict[str, Any]:
        """One call under ``/api/2.0/mlflow/``; its JSON (raises on an error status)."""
        response = self.http.request(method, f"/api/2.0/mlflow/{endpoint}", **kwargs)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def artifact(self, path: str) -> bytes:
        """One artifact's bytes through the server's artifact proxy."""
        response = self.http.get(f"/api/2.0/mlflow-artifacts/artifacts/{path}")
        response.raise_for_status()
        return response.content

    def register_folder(self, name: str, folder: Path, artifact_path: str = "model") -> str:
        """Log ``folder`` as a run's artifacts and register it as a new version of ``name``."""
        run = self.call("POST", "runs/create", json={"experiment_id": "0"})["run"]["info"]
        base = run["artifact_uri"].split(":", 1)[1].strip("/")
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = path.relative_to(folder).as_posix()
            self.http.put(f"/api/2.0/mlflow-artifacts/artifacts/{base}/{artifact_path}/{rel}",
                          content=path.read_bytes()).raise_for_status()
        if not self.http.get("/api/2.0/mlflow/registered-models/get",
                             params={"name": name}).is_success:
            self.call("POST", "registered-models/create", json={"name": name})
        version = self.call("POST", "model-versions/create", json={
            "name": name, "source": f"{run['artifact_uri']}/{artifact_path}",
            "run_id": run["run_id"]})["model_version"]["version"]
        return str(version)


@contextmanager
def mlflow_server(tmp: Path) -> Iterator[MlflowServer]:
    """``mlflow server`` on a free loopback port, SQLite store, proxied artifacts under ``tmp``."""
    port = free_port()
    proc = start("mlflow", [str(mlflow_bin()), "server", "--backend-store-uri",
                            f"sqlite:///{tmp / 'mlflow.db'}", "--artifacts-destination",
                            str(tmp / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
                            "--workers", "1"], {"PATH": "/usr/bin:/bin", "HOME": str(tmp)}, tmp)
    url = f"http://127.0.0.1:{port}"
    try:
        # the first start creates its database: slow on a loaded machine
        wait_ready(url, [proc], timeout=600, path="/health")
        server = MlflowServer(url)
        yield server
        server.http.close()
    finally:
        proc.stop()
