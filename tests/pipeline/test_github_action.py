"""The GitHub Action (``action.yml``) run as the runner would run its steps, against a real
``kiln-service up``: a job that succeeds sets the outputs and downloads the model; a job that fails
fails the step with its reason in the step summary.

The ``install`` step (pip-installing the CLI from the action's folder) is left out: the CLI is
already installed in this environment, and the test must not modify it.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pipeline_support import BIN, ROOT, TF_ENV, free_port, wait_ready

from _support.processes import NO_COMPILE_CACHE

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """``kiln-service up`` with the embedded defaults: ``(url, api key)``."""
    data = tmp_path_factory.mktemp("kiln-up")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("KILN_")}, **TF_ENV,
           **NO_COMPILE_CACHE}
    port = free_port()
    with open(data / "up.log", "wb") as out:
        up = subprocess.Popen([str(BIN / "kiln-service"), "up", "--port", str(port),
                               "--data-dir", str(data / "d")], env=env, stdout=out,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, up, data / "up.log")
        yield url, (data / "d" / "api-key").read_text().strip()
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        up.wait(timeout=60)


def run_action(workdir: Path, inputs: dict[str, str]) -> tuple[int, dict[str, str], str, str]:
    """Run the action's steps (but ``install``) with bash as a runner does.

    Returns:
        ``(exit code, outputs, step summary, output)``.
    """
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    defaults = {k: str(v.get("default", "")) for k, v in action["inputs"].items()}
    values = {**defaults, **inputs}
    run_dir = Path(tempfile.mkdtemp(prefix="runner-", dir=workdir))  # each run its own files
    out_file, summary = run_dir / "github_output", run_dir / "step_summary"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("KILN_")},
           "GITHUB_OUTPUT": str(out_file), "GITHUB_STEP_SUMMARY": str(summary),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}

    def expand(text: str) -> str:
        text = re.sub(r"\$\{\{\s*inputs\.([\w-]+)\s*\}\}", lambda m: values[m.group(1)], text)
        return text.replace("${{ github.action_path }}", str(ROOT))

    code, log = 0, ""
    for step in action["runs"]["steps"]:
        if step["id"] == "install":
            continue
        step_env = {**env, **{k: expand(str(v)) for k, v in step.get("env", {}).items()}}
        assert "${{" not in step["run"], "inputs must reach scripts through env, not the text"
        proc = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=workdir, env=step_env,
                              capture_output=True, text=True, timeout=900)
        code, log = proc.returncode, log + proc.stdout + proc.stderr
        if code:
            break
    outputs = dict(line.split("=", 1) for line in out_file.read_text().splitlines() if "=" in line) \
        if out_file.exists() else {}
    return code, outputs, summary.read_text() if summary.exists() else "", log


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, model_tgz: bytes, inputs_npz: bytes) -> Path:
    ws = tmp_path_factory.mktemp("ws")
    with tarfile.open(fileobj=io.BytesIO(model_tgz)) as tar:
        tar.extractall(ws, filter="data")  # -> ws/model
    (ws / "inputs.npz").write_bytes(inputs_npz)
    return ws


def test_action_compiles_and_sets_outputs(service: tuple[str, str], workspace: Path) -> None:
    url, key = service
    code, outputs, summary, log = run_action(workspace, {
        "model-path": "model", "example-inputs": "inputs.npz", "flags": "--dynamic-batch-size",
        "url": url, "api-key": key, "out-dir": "compiled"})
    assert code == 0, log[-3000:]
    assert outputs["status"] == "succeeded" and len(outputs["job-id"]) == 32
    assert (Path(outputs["model-path"]) / "saved_model.pb").is_file() or \
        (workspace / outputs["model-path"] / "saved_model.pb").is_file()
    report: Any = (workspace / outputs["report-path"]).read_text()
    assert '"tracer"' in report
    assert "succeeded" in summary and "stage    compiling" in log
    assert key not in log


def test_failed_job_fails_the_step_with_its_reason(service: tuple[str, str], workspace: Path) -> None:
    url, key = service
    code, outputs, summary, log = run_action(workspace, {
        "model-path": "model", "example-inputs": "inputs.npz", "timeout": "1",
        "url": url, "api-key": key, "out-dir": "never"})
    assert code == 1, log[-3000:]
    assert outputs["status"] == "failed" and "model-path" not in outputs
    assert "TimeOut" in summary and outputs["job-id"] in summary
    assert f"kiln jobs logs {outputs['job-id']}" in summary
    assert not (workspace / "never").exists()


def test_readme_example_uses_the_actions_inputs_and_outputs() -> None:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Use Kiln from a pipeline"):]
    (snippet,) = re.findall(r"^```yaml\n(.*?)^```", section.split("\n## ")[0], flags=re.S | re.M)
    steps = yaml.safe_load(snippet)
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    assert set(steps[0]["with"]) <= set(action["inputs"])
    required = {k for k, v in action["inputs"].items() if v.get("required")}
    assert required <= set(steps[0]["with"])
    used = set(re.findall(r"steps\.kiln\.outputs\.([\w-]+)", snippet))
    assert used and used <= set(action["outputs"])
