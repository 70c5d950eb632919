"""``pip install ./client`` in a fresh virtual environment: no TensorFlow, a working ``kiln``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from client_service import TF_ENV, RunningService
from model_factory import example_input, run_saved_model, save_model

pytestmark = [pytest.mark.slow, pytest.mark.integration]

CLIENT_DIR = Path(__file__).resolve().parents[2] / "client"


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv with only ``./client`` installed (pip uses the machine's pip config)."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    result = subprocess.run([*pip, "install", "--disable-pip-version-check", str(CLIENT_DIR)],
                            capture_output=True, text=True, timeout=900, check=False)
    if result.returncode != 0:
        pytest.fail(f"pip install ./client failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return venv


def test_install_pulls_no_tensorflow_and_kiln_help_works(fresh_venv: Path) -> None:
    listed = subprocess.run([str(fresh_venv / "bin" / "python"), "-m", "pip", "list", "--format=json"],
                            capture_output=True, text=True, check=True)
    installed = {p["name"].lower().replace("_", "-") for p in json.loads(listed.stdout)}
    assert {"httpx", "pydantic", "numpy", "kiln-client"} <= installed
    assert not {p for p in installed if "tensorflow" in p or "keras" in p or p in ("fastapi", "celery")}
    result = subprocess.run([str(fresh_venv / "bin" / "kiln"), "--help"], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0 and "exit codes" in result.stdout


def test_installed_kiln_compiles_a_saved_model(fresh_venv: Path, kiln_service: RunningService,
                                               tmp_path: Path) -> None:
    model = save_model(tmp_path / "model", seed=5)
    np.savez(tmp_path / "inputs.npz", x=example_input(2))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    env.update(TF_ENV, KILN_URL=kiln_service.url, KILN_API_KEY=kiln_service.api_key)
    result = subprocess.run(
        [str(fresh_venv / "bin" / "kiln"), "compile", str(model), "--inputs", str(tmp_path / "inputs.npz"),
         "--out", str(tmp_path / "compiled")],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stderr
    x = example_input(2)
    np.testing.assert_allclose(run_saved_model(Path(result.stdout.strip()), x), run_saved_model(model, x),
                               rtol=1e-4, atol=1e-5)
