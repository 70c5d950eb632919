"""Fixtures of the worker tests: tiny real SavedModels, built once per session."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from worker_helpers import ZOO_SCRIPT, child_env


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All the models of ``model_zoo.py``, built once per session in a subprocess."""
    out = tmp_path_factory.mktemp("zoo")
    subprocess.run([sys.executable, str(ZOO_SCRIPT), str(out)], check=True, env=child_env(),
                   capture_output=True, timeout=300)
    return out
