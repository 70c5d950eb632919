"""MLflow round trip against a real ``mlflow server`` (from PyPI, on loopback) and a real
``kiln-service up``: the README's MLflow example compiles a registered model with the CLI and
registers the compiled one, with the report's figures as tags and the report as an artifact."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow_support import MlflowServer, mlflow_server
from pipeline_support import BIN, ROOT, free_port

import kiln_client
from _support.processes import quiet_env, start, wait_ready
from kiln_client.errors import ValidationError
from kiln_service.config import Settings
from kiln_service.exports import register_in_mlflow, run_exports

pytestmark = pytest.mark.integration
SECTION = "## Use Kiln from a pipeline"
EXAMPLE = ROOT / "examples" / "mlp"


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    start_at = text.index(SECTION)
    section = text[start_at:text.find("\n## ", start_at + len(SECTION))]
    (code,) = [c for c in re.findall(r"^```bash\n(.*?)^```", section, flags=re.S | re.M)
               if "--mlflow-model" in c]
    return code


@pytest.fixture(scope="module")
def mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


@pytest.fixture(scope="module")
def kiln(mlflow: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """``kiln-service up`` with the MLflow server configured; the client's environment."""
    tmp = tmp_path_factory.mktemp("kiln")
    url = f"http://127.0.0.1:{free_port()}"
    up = start("up", [str(BIN / "kiln-service"), "up", "--port", url.rsplit(":", 1)[1],
                      "--data-dir", str(tmp / "data")],
               quiet_env(KILN_MLFLOW_TRACKING_URI=mlflow.url), tmp)
    try:
        wait_ready(url, [up])
        yield quiet_env(KILN_URL=url, KILN_API_KEY=(tmp / "data" / "api-key").read_text().strip(),
                        PATH=f"{BIN}:/usr/bin:/bin")
    finally:
        up.stop(grace=60)


def test_readme_mlflow_example_registers_the_compiled_model(
        mlflow: MlflowServer, kiln: dict[str, str], tmp_path: Path) -> None:
    with tarfile.open(EXAMPLE / "mlp.tar.gz") as tar:
        tar.extractall(tmp_path / "src", filter="data")
    (saved,) = [p.parent for p in (tmp_path / "src").rglob("saved_model.pb")]
    assert mlflow.register_folder("mlp", saved) == "1"
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.txt").write_text("no model here")
    mlflow.register_folder("not-a-model", tmp_path / "notes")
    client = kiln_client.Client(kiln["KILN_URL"], kiln["KILN_API_KEY"])
    with pytest.raises(ValidationError) as info:
        client.compile(mlflow_model="models:/not-a-model/1", wait=False, progress=False)
    assert info.value.code == "no_saved_model" and "mlflow.tensorflow.log_model" in str(info.value)
    with pytest.raises(ValidationError) as info:
        client.compile(mlflow_model="models:/mlp/7", wait=False, progress=False)
    assert info.value.code == "model_source_not_found"

    shutil.copy(EXAMPLE / "example_inputs.npz", tmp_path / "example_inputs.npz")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_example()], cwd=tmp_path,
                            env=kiln, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mlflow export succeeded: models:/mlp-compiled/1" in result.stderr, result.stderr

    version = mlflow.call("GET", "model-versions/get",
                          params={"name": "mlp-compiled", "version": "1"})["model_version"]
    tags = {t["key"]: t["value"] for t in version.get("tags", [])}
    job = client.jobs.get(tags["kiln.job_id"])
    assert job.model_source == "models:/mlp/1" and job.mlflow_register == "mlp-compiled"
    assert [(e.kind, e.status, e.location) for e in job.exports] == [
        ("mlflow", "succeeded", "models:/mlp-compiled/1")]
    report = job.report or {}
    assert tags["kiln.source"] == "models:/mlp/1"
    assert float(tags["kiln.on_neuron_ratio"]) == report["on_neuron_ratio"]
    assert tags["kiln.numerical_check.within_tolerance"] == "true"
    assert "kiln.speedup.batch_1" in tags
    base = version["source"].split(":", 1)[1].strip("/").rsplit("/", 1)[0]
    full_report = json.loads(mlflow.artifact(f"{base}/report.json"))
    assert full_report["tracer"]["ops_total"] == report["ops_total"]
    assert mlflow.artifact(f"{base}/compiled_model/saved_model.pb")
    run = mlflow.call("GET", "runs/get", params={"run_id": version["run_id"]})["run"]
    assert run["info"]["status"] == "FINISHED"
    assert {m["key"] for m in run["data"]["metrics"]} >= {"on_neuron_ratio", "ops_total"}
    # A retry of the job (its worker died after registering) finds that version: no second one.
    # It returns before reading any file, hence no files.
    again = register_in_mlflow(Settings(mlflow_tracking_uri=mlflow.url), "mlp-compiled",
                               job_id=job.id, files={}, summary=report)
    assert again == "models:/mlp-compiled/1"
    found = mlflow.call("GET", "model-versions/search", params={"filter": "name = 'mlp-compiled'"})
    assert [v["version"] for v in found["model_versions"]] == ["1"]


def test_a_failed_registration_is_reported_not_raised(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    lines: list[str] = []
    (report := tmp_path / "report.json").write_text("{}")
    exports = run_exports(
        Settings(data_dir=tmp_path, mlflow_tracking_uri=dead), job_id="j1",
        pipeline={"mlflow_register": "m"}, summary={"on_neuron_ratio": 0.5}, log=lines.append,
        files={"compiled_model.tar.gz": EXAMPLE / "mlp.tar.gz", "report.json": report})
    (export,) = exports
    assert (export.kind, export.status, export.location) == ("mlflow", "failed", "models:/m")
    assert export.detail and "did not answer" in export.detail
    assert any("MLflow registration failed (the job still succeeded)" in line for line in lines)
