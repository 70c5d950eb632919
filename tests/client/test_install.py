"""Fresh installs from this checkout, as a newcomer makes them, in new virtual environments.

- ``pip install ./client``: no TensorFlow, a working ``kiln``.
- ``./client``, ``./service[api]`` and ``./worker`` (what the embedded ``kiln-service up`` needs):
  no Redis, PostgreSQL or S3 package, no FastAPI in the worker's requirements, a clear error for
  a URL whose extra is missing, and a real compile through ``kiln-service up``.

Installed with uv from its local cache, pinned to ``uv.lock`` (``uv export``), so only the
package registry is ever asked and nothing is downloaded twice.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from client_service import TF_ENV, RunningService
from model_factory import example_input, run_saved_model, save_model

from _support.processes import free_port, start, stop_group, wait_ready

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
CLIENT_DIR = REPO / "client"
#: packages of the optional extras (redis, postgres, s3) and of the API's (api)
EXTRA_PACKAGES = {"redis", "psycopg", "psycopg-binary", "boto3", "botocore", "s3transfer"}


def _uv() -> str:
    found = shutil.which("uv")
    if found is None:
        pytest.skip("uv is not installed (scripts/_services.sh ensure_python_env installs it)")
    return found


def uv_venv(venv: Path, *requirements: str) -> Path:
    """A new venv holding ``requirements``, at the versions of ``uv.lock``."""
    uv = _uv()
    constraints = venv.parent / "constraints.txt"
    subprocess.run([uv, "export", "--frozen", "--all-packages", "--all-extras", "--no-dev",
                    "--no-hashes", "--no-emit-workspace", "--no-header", "-o", str(constraints)],
                   cwd=REPO, check=True, capture_output=True, timeout=300)
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True,
                   capture_output=True, timeout=300)
    result = subprocess.run([uv, "pip", "install", "--python", str(venv / "bin" / "python"),
                             "-c", str(constraints), *requirements],
                            cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    if result.returncode != 0:
        pytest.fail(f"uv pip install {' '.join(requirements)} failed:\n{result.stderr[-3000:]}")
    return venv


def installed(venv: Path) -> set[str]:
    listed = subprocess.run([_uv(), "pip", "list", "--python", str(venv / "bin" / "python"),
                             "--format", "json"], capture_output=True, text=True, check=True)
    return {p["name"].lower().replace("_", "-") for p in json.loads(listed.stdout)}


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv with only ``./client`` installed."""
    return uv_venv(tmp_path_factory.mktemp("venv") / "env", "./client")


def test_install_pulls_no_tensorflow_and_kiln_help_works(fresh_venv: Path) -> None:
    names = installed(fresh_venv)
    assert {"httpx", "pydantic", "numpy", "kiln-client"} <= names
    assert not {p for p in names if "tensorflow" in p or "keras" in p or p in ("fastapi", "celery")}
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


#: the requirements of a distribution, followed without any extra (what a plain install pulls)
_CLOSURE = """
import json, re, sys
from importlib import metadata
seen, todo = set(), [sys.argv[1]]
while todo:
    name = todo.pop()
    key = re.sub(r"[-_.]+", "-", name).lower()
    if key in seen:
        continue
    seen.add(key)
    try:
        requires = metadata.requires(name) or []
    except metadata.PackageNotFoundError:
        continue
    todo += [re.match(r"[A-Za-z0-9._-]+", r).group(0) for r in requires if "extra ==" not in r]
print(json.dumps(sorted(seen)))
"""


def test_embedded_stack_needs_no_redis_postgres_or_s3_package(
        tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    venv = uv_venv(tmp_path_factory.mktemp("stack") / "env", "./client", "./service[api]",
                   "./worker")
    bin_dir = venv / "bin"
    names = installed(venv)
    assert {"kiln-client", "kiln-service", "kiln-worker", "fastapi", "tensorflow"} <= names
    assert names.isdisjoint(EXTRA_PACKAGES), names & EXTRA_PACKAGES
    closure = json.loads(subprocess.run([str(bin_dir / "python"), "-c", _CLOSURE, "kiln-worker"],
                                        capture_output=True, text=True, check=True).stdout)
    assert "kiln-service" in closure and "celery" in closure
    assert not {"fastapi", "starlette", "uvicorn"} & set(closure), closure
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    env.update(TF_ENV, KILN_DATA_DIR=str(tmp_path / "data"))
    # A URL whose extra is missing: one clear line per setting, saying what to install.
    urls = {"KILN_DATABASE_URL": "postgresql+psycopg://kiln@127.0.0.1:1/kiln",
            "KILN_BROKER_URL": "redis://127.0.0.1:1/0", "KILN_STORAGE_URL": "s3://bucket/kiln"}
    refused = subprocess.run([str(bin_dir / "kiln-service"), "migrate"], env={**env, **urls},
                             capture_output=True, text=True, timeout=120, check=False)
    assert refused.returncode != 0
    for extra in ("postgres", "redis", "s3"):
        assert f"pip install 'kiln-service[{extra}]'" in refused.stderr, refused.stderr
    # The embedded default: kiln-service up (API + worker) compiles the bundled MLP.
    data, port = tmp_path / "data", free_port()
    service = start("up", [str(bin_dir / "kiln-service"), "up", "--port", str(port),
                           "--data-dir", str(data)], env, tmp_path)
    try:
        wait_ready(f"http://127.0.0.1:{port}", [service], timeout=240)
        mlp = REPO / "examples" / "mlp"
        compiled = subprocess.run(
            [str(bin_dir / "kiln"), "compile", str(mlp / "mlp.tar.gz"), "--inputs",
             str(mlp / "example_inputs.npz"), "--out", str(tmp_path / "compiled")],
            env={**env, "KILN_URL": f"http://127.0.0.1:{port}",
                 "KILN_API_KEY": (data / "api-key").read_text().strip()},
            capture_output=True, text=True, timeout=600, check=False)
        assert compiled.returncode == 0, compiled.stderr + service.tail()
        assert (Path(compiled.stdout.strip()) / "saved_model.pb").is_file()
    finally:
        stop_group(service.popen, grace=30, term_group=True)
