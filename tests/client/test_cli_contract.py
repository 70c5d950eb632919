"""Every ``kiln`` subcommand against the real running service, with its exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from client_service import TF_ENV, RunningService
from model_factory import example_input, run_saved_model, save_lookup_model, save_model

import kiln_client
from _support.processes import free_port, run_script

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def kiln_command() -> list[str]:
    script = Path(sys.executable).parent / "kiln"
    return [str(script)] if script.exists() else [sys.executable, "-m", "kiln_client.cli"]


def run_kiln(url: str, *args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **TF_ENV, "KILN_URL": url}
    env.pop("KILN_DEBUG", None)
    return subprocess.run([*kiln_command(), *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(tmp_path_factory.mktemp("cli-models") / "dense", seed=3)


@pytest.fixture(scope="module")
def inputs_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli-inputs") / "inputs.npz"
    np.savez(path, x=example_input(2))
    return path


def test_compile_out_writes_a_matching_saved_model(kiln_service: RunningService, model_dir: Path,
                                                   inputs_npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "compiled"
    result = run_kiln(kiln_service.url, "compile", str(model_dir), "--inputs", str(inputs_npz),
                      "--flags", "--dynamic-batch-size", "--out", str(out), "--label", "cli=yes")
    assert result.returncode == 0, result.stderr
    compiled = Path(result.stdout.strip())
    assert compiled.is_dir() and str(compiled).startswith(str(out))
    assert "succeeded" in result.stderr
    summary = [line.strip() for line in result.stderr.splitlines() if line.startswith("  ")]
    assert [line.split(":")[0] for line in summary] == ["placement", "numerical check", "speed"]
    assert "within tolerance" in summary[1] and "batch 1 " in summary[2]
    x = example_input(2)
    np.testing.assert_allclose(run_saved_model(compiled, x), run_saved_model(model_dir, x),
                               rtol=1e-4, atol=1e-5)


def test_jobs_subcommands(kiln_service: RunningService, model_dir: Path, tmp_path: Path) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    queued = run_kiln(kiln_service.url, "compile", str(model_dir), "--no-wait", "--json", "--name", name)
    assert queued.returncode == 0, queued.stderr
    job_id = json.loads(queued.stdout)["id"]

    listed = run_kiln(kiln_service.url, "jobs", "list", "--name", name, "--json")
    assert listed.returncode == 0 and [j["id"] for j in json.loads(listed.stdout)] == [job_id]

    followed = run_kiln(kiln_service.url, "jobs", "logs", job_id, "--follow")
    assert followed.returncode == 0 and followed.stdout.strip()
    plain = run_kiln(kiln_service.url, "jobs", "logs", job_id)
    assert plain.returncode == 0 and plain.stdout == followed.stdout

    shown = run_kiln(kiln_service.url, "jobs", "show", job_id, "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["status"] == "succeeded"
    table = run_kiln(kiln_service.url, "jobs", "show", job_id)
    assert f"id:        {job_id}" in table.stdout

    downloaded = run_kiln(kiln_service.url, "jobs", "download", job_id, "--out", str(tmp_path / "dl"))
    assert downloaded.returncode == 0 and (Path(downloaded.stdout.strip()) / "saved_model.pb").is_file()
    report = run_kiln(kiln_service.url, "jobs", "download", job_id, "--artifact", "report.json",
                      "--out", str(tmp_path / "r"))
    assert report.returncode == 0 and json.loads(Path(report.stdout.strip()).read_text())

    late_cancel = run_kiln(kiln_service.url, "jobs", "cancel", job_id)
    assert late_cancel.returncode == 3 and "409" in late_cancel.stderr

    deleted = run_kiln(kiln_service.url, "jobs", "delete", job_id)
    assert deleted.returncode == 0 and deleted.stdout == ""
    gone = run_kiln(kiln_service.url, "jobs", "show", job_id)
    assert gone.returncode == 3 and "404" in gone.stderr and "Traceback" not in gone.stderr


def test_failed_job_exits_1_with_reason(kiln_service: RunningService, tmp_path: Path) -> None:
    model = save_lookup_model(tmp_path / "lookup")
    np.savez(tmp_path / "ids.npz", ids=np.array([1, 2], "int64"))
    result = run_kiln(kiln_service.url, "compile", str(model), "--inputs", str(tmp_path / "ids.npz"))
    assert result.returncode == 1, result.stderr
    assert "client_error" in result.stderr and "lookup" in result.stderr.lower()
    assert "kiln jobs logs" in result.stderr and "Traceback" not in result.stderr


def test_wait_timeout_exits_4(kiln_service: RunningService, model_dir: Path) -> None:
    result = run_kiln(kiln_service.url, "compile", str(model_dir), "--wait-timeout", "0.2", "--json")
    assert result.returncode == 4, result.stderr
    job = json.loads(result.stdout)
    assert job["status"] in ("queued", "running")
    with kiln_client.Client(kiln_service.url) as client:
        client.jobs.get(job["id"]).wait(raise_on_failure=False)


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The worker zoo's ``slow`` model: its while loop runs for minutes on its example inputs,
    so a cancel always comes before the job could finish (a quick model raced it)."""
    out = tmp_path_factory.mktemp("cli-slow")
    run_script(ROOT / "tests" / "worker" / "model_zoo.py", str(out), "slow")
    return out / "slow"


def test_cancelled_while_waiting_exits_5(kiln_service: RunningService, slow_model: Path) -> None:
    name = f"cancel-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, **TF_ENV, "KILN_URL": kiln_service.url}
    proc = subprocess.Popen([*kiln_command(), "compile", str(slow_model / "model.tar.gz"),
                             "--inputs", str(slow_model / "example_inputs.npz"), "--name", name],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        with kiln_client.Client(kiln_service.url) as client:
            jobs: list[kiln_client.Job] = []
            while not jobs and proc.poll() is None:
                jobs = list(client.jobs.list(name=name))
                time.sleep(0.1)
            assert jobs, proc.communicate()
        cancel = run_kiln(kiln_service.url, "jobs", "cancel", jobs[0].id, "--json")
        assert cancel.returncode == 0, cancel.stderr
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 5, err
        assert "cancelled" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_usage_and_network_errors(kiln_service: RunningService, tmp_path: Path) -> None:
    usage = run_kiln(kiln_service.url, "jobs", "list", "--status", "bogus")
    assert usage.returncode == 2 and "usage: kiln" in usage.stderr
    missing = run_kiln(kiln_service.url, "compile", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    down = run_kiln(f"http://127.0.0.1:{free_port()}", "jobs", "list")
    assert down.returncode == 3 and "could not reach Kiln" in down.stderr
