"""The README's "Use Kiln from a pipeline" example runs against a real ``kiln-service up``
(API and worker, a real compile) with a real webhook receiver, as written."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pipeline_support import BIN, ROOT, TF_ENV, free_port, wait_ready

pytestmark = pytest.mark.integration
SECTION = "## Use Kiln from a pipeline"


def example() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    (code,) = re.findall(r"^```python\n(.*?)^```", text[start:end], flags=re.S | re.M)
    return code


def test_pipeline_example_runs(tmp_path: Path) -> None:
    code = example()
    assert "webhooks.verify(" in code and "webhook_url=" in code and ".events()" in code
    receiver_port = free_port()
    code = code.replace("8765", str(receiver_port))  # a free port instead of the README's
    save = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
            "from model_factory import save_model; save_model(Path(sys.argv[2]), seed=5)")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("KILN_")}, **TF_ENV}
    subprocess.run([sys.executable, "-c", save, str(ROOT / "tests" / "client"),
                    str(tmp_path / "my_model")], env=env, check=True, timeout=600)
    port, data = free_port(), tmp_path / "kiln"
    with open(tmp_path / "up.log", "wb") as out:
        up = subprocess.Popen([str(BIN / "kiln-service"), "up", "--port", str(port), "--data-dir",
                               str(data)], env={**env, "KILN_WEBHOOK_ALLOW_PRIVATE_URLS": "true"},
                              stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, up, tmp_path / "up.log")
        run_env = {**env, "KILN_URL": url, "KILN_API_KEY": (data / "api-key").read_text().strip()}
        result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=run_env,
                                capture_output=True, text=True, timeout=600)
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        up.wait(timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert any(line.startswith("compiling ") for line in lines), result.stdout
    received = [line.split() for line in lines if line.startswith("job.")]
    assert received and received[-1][0] == "job.succeeded", result.stdout
