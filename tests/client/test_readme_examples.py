"""The SDK and CLI examples of the README's "Compile from Python or the shell" section run
against a real service."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from client_service import TF_ENV, RunningService
from model_factory import run_saved_model, save_model

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Compile from Python or the shell"


def _section() -> str:
    """The README's SDK section: from its heading to the next second-level heading."""
    text = README.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start:] if end < 0 else text[start:end]


def code_blocks(language: str) -> list[str]:
    """The fenced code blocks of ``language`` in the README's SDK section."""
    return re.findall(rf"^```{language}\n(.*?)^```", _section(), flags=re.S | re.M)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A folder with what the examples name: ``my_model/`` and ``inputs.npz``."""
    save_model(tmp_path / "my_model", seed=11)
    np.savez(tmp_path / "inputs.npz", x=np.ones((1, 3), "float32"))
    return tmp_path


def _env(service: RunningService) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    env.update(TF_ENV)
    env["KILN_URL"] = service.url
    env["KILN_API_KEY"] = service.api_key
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _check_compiled(workspace: Path) -> None:
    compiled = workspace / "compiled"
    x = np.ones((1, 3), "float32")
    np.testing.assert_allclose(run_saved_model(compiled, x), run_saved_model(workspace / "my_model", x),
                               rtol=1e-4, atol=1e-5)


def test_doc_has_the_two_examples() -> None:
    (python,) = code_blocks("python")
    (shell,) = code_blocks("bash")
    assert len([line for line in python.splitlines() if line.strip()]) <= 5
    assert shell.strip().startswith("kiln compile") and len(shell.strip().splitlines()) == 1


def test_python_example_runs(kiln_service: RunningService, workspace: Path) -> None:
    (python,) = code_blocks("python")
    result = subprocess.run([sys.executable, "-c", python], cwd=workspace, env=_env(kiln_service),
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("succeeded ")
    _check_compiled(workspace)


def test_cli_example_runs(kiln_service: RunningService, workspace: Path) -> None:
    (shell,) = code_blocks("bash")
    result = subprocess.run(["bash", "-c", shell], cwd=workspace, env=_env(kiln_service),
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    _check_compiled(workspace)
