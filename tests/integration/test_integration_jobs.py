"""Jobs end to end on the production column: API (uvicorn) + Celery worker, Redis, PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from pathlib import Path

import httpx
import pytest
from integration_support import Stack, check_compiled, runner_pids, tar_names

pytestmark = pytest.mark.integration


def _report(stack: Stack, job_id: str, tmp_path: Path) -> dict:
    return json.loads(stack.download(job_id, "report.json", tmp_path / "report.json").read_text())


def test_compiled_model_downloads_with_its_digest_and_matches(
    prod_stack: Stack, zoo: Path, tmp_path: Path
) -> None:
    job = prod_stack.submit(zoo / "mlp" / "model.tar.gz", zoo / "mlp" / "example_inputs.npz",
                            name="it-success")
    done = prod_stack.wait(job["id"])
    assert done["status"] == "succeeded", done["failure"]
    artifacts = {a["name"]: a for a in done["artifacts"]}
    assert set(artifacts) == {"compiled_model.tar.gz", "report.json", "compile.log"}
    archive = prod_stack.download(job["id"], "compiled_model.tar.gz", tmp_path / "c.tar.gz")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert digest == artifacts["compiled_model.tar.gz"]["sha256"]
    assert archive.stat().st_size == artifacts["compiled_model.tar.gz"]["size"]
    check = check_compiled(archive, zoo / "mlp" / "model", zoo / "mlp" / "example_inputs.npz",
                           tmp_path / "check")
    assert check["shapes_equal"] is True
    assert check["max_abs_diff"] <= 1e-5 + 1e-3 * check["max_abs_output"]
    report = _report(prod_stack, job["id"], tmp_path)
    assert report["numerical_check"]["within_tolerance"] is True
    # Automatic placement is measured, so whether XLA pays off for this MLP depends on the
    # machine's load; what must hold either way is that every op is accounted for.
    tracer = report["tracer"]
    compiled = [s for s in tracer["subgraphs"] if s["status"] == "compiled"]
    assert tracer["ops_on_accelerator"] == sum(len(s["ops"]) for s in compiled)
    assert tracer["ops_on_accelerator"] + len(tracer["cpu_ops"]) == tracer["ops_total"] > 0
    assert all(op["reason"] for op in tracer["cpu_ops"])
    assert done["report"]["numerical_check"]["within_tolerance"] is True
    log = prod_stack.client.get(f"/v1/jobs/{job['id']}/logs").text
    assert "compile process" in log and "[verifying]" in log
    assert done["started_at"] and done["finished_at"] and done["attempts"] == 1


def test_workdir_comes_back_as_an_archive(prod_stack: Stack, zoo: Path, tmp_path: Path) -> None:
    job = prod_stack.submit(zoo / "mlp" / "model.tar.gz", zoo / "mlp" / "example_inputs.npz",
                            flags="--workdir ./my-artifacts")
    done = prod_stack.wait(job["id"])
    assert done["status"] == "succeeded", done["failure"]
    assert "workdir.tar.gz" in {a["name"] for a in done["artifacts"]}
    names = tar_names(prod_stack.download(job["id"], "workdir.tar.gz", tmp_path / "w.tgz"))
    files = [n for n in names if n.startswith("workdir/") and "." in n.rsplit("/", 1)[-1]]
    assert files, names
    assert all(n == "workdir" or n.startswith("workdir/") for n in names)
    assert not Path("my-artifacts").exists()  # the user's path is never used on the worker


def test_inputs_generated_from_the_signature(prod_stack: Stack, zoo: Path, tmp_path: Path) -> None:
    job = prod_stack.submit(zoo / "two_inputs" / "model.tar.gz")
    done = prod_stack.wait(job["id"])
    assert done["status"] == "succeeded", done["failure"]
    report = _report(prod_stack, job["id"], tmp_path)
    assert report["inputs_generated"] is True
    assert report["inputs"] == {"a": {"dtype": "float32", "shape": [1, 4]},
                                "b": {"dtype": "int32", "shape": [1, 4]}}
    assert report["numerical_check"]["within_tolerance"] is True


def test_placement_spec_is_honoured(prod_stack: Stack, zoo: Path, tmp_path: Path) -> None:
    job = prod_stack.submit(zoo / "mixed" / "model.tar.gz",
                            placement={"include_ops": ["MatMul"]})
    done = prod_stack.wait(job["id"])
    assert done["status"] == "succeeded", done["failure"]
    tracer = _report(prod_stack, job["id"], tmp_path)["tracer"]
    assert tracer["subgraphs"]
    assert set().union(*(s["op_types"] for s in tracer["subgraphs"])) == {"MatMul"}
    assert {"Relu", "Tanh", "Sigmoid"} <= {op["op"] for op in tracer["cpu_ops"]}
    summary_types = set().union(*(s["op_types"] for s in done["report"]["subgraphs"]))
    assert summary_types == {"MatMul"}


def test_model_the_tracer_rejects_fails_with_its_reason(prod_stack: Stack, zoo: Path) -> None:
    job = prod_stack.submit(zoo / "table_writer" / "model.tar.gz")
    done = prod_stack.wait(job["id"])
    assert done["status"] == "failed"
    failure = done["failure"]
    assert failure["kind"] == "client_error" and failure["code"] == "UnsupportedModel"
    assert failure["message"]
    assert "compile.log" in {a["name"] for a in done["artifacts"]}
    assert "compiled_model.tar.gz" not in {a["name"] for a in done["artifacts"]}


@pytest.mark.parametrize(("kind", "quoted"), [
    # the model's own assertion message, the node that raised it, TensorFlow's error type
    ("asserting", ["kiln-zoo: every input must exceed one hundred", "assert_greater",
                   "InvalidArgumentError", "Condition x > y did not hold"]),
    # TensorFlow's reshape message, whole (not "Graph execution error:")
    ("bad_reshape", ["InvalidArgumentError", "Reshape", "6 values",
                     "requested shape requires a multiple of 4"]),
])
def test_a_model_that_raises_its_own_error_fails_with_its_text(
    prod_stack: Stack, zoo: Path, kind: str, quoted: list[str]
) -> None:
    job = prod_stack.submit(zoo / kind / "model.tar.gz", zoo / kind / "example_inputs.npz")
    done = prod_stack.wait(job["id"])
    assert done["status"] == "failed", done
    failure = done["failure"]
    assert (failure["kind"], failure["code"]) == ("client_error", "ModelError"), failure
    for text in quoted:
        assert text in failure["message"], (text, failure["message"])
    assert "Graph execution error" not in failure["message"]
    assert done["attempts"] == 1  # a client error is never retried


def _wait_computing(stack: Stack, job_id: str) -> list[int]:
    """Wait until the job's compile child runs the model; return its pids."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        job = stack.job(job_id)
        pids = runner_pids(job_id)
        if job["stage"] == "loading" and pids:
            return pids
        assert job["status"] in ("queued", "running"), job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never reached the loading stage")


def test_cancel_kills_the_running_compile(prod_stack: Stack, zoo: Path) -> None:
    job = prod_stack.submit(zoo / "slow" / "model.tar.gz", zoo / "slow" / "example_inputs.npz")
    pids = _wait_computing(prod_stack, job["id"])
    resp = prod_stack.client.post(f"/v1/jobs/{job['id']}/cancel")
    assert resp.status_code == 200, resp.text
    done = prod_stack.wait(job["id"], timeout=60)
    assert done["status"] == "cancelled"
    assert runner_pids(job["id"]) == []
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def test_timeout_fails_the_job_with_TimeOut(prod_stack: Stack, zoo: Path) -> None:
    job = prod_stack.submit(zoo / "slow" / "model.tar.gz", zoo / "slow" / "example_inputs.npz",
                            timeout_seconds="6")
    done = prod_stack.wait(job["id"], timeout=180)
    assert done["status"] == "failed"
    failure = done["failure"]
    assert (failure["kind"], failure["code"]) == ("client_error", "TimeOut")
    assert "6 s" in failure["message"] and "timeout_seconds" in failure["message"]
    assert runner_pids(job["id"]) == []


def test_log_lines_stream_while_the_job_runs(prod_stack: Stack, zoo: Path) -> None:
    job = prod_stack.submit(zoo / "slow" / "model.tar.gz", zoo / "slow" / "example_inputs.npz")
    seen: list[str] = []
    end = None
    with httpx.stream("GET", f"{prod_stack.url}/v1/jobs/{job['id']}/logs",
                      headers={"Accept": "text/event-stream"}, timeout=120) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in resp.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                data = line[5:].lstrip()
                if event == "end":
                    end = data
                    break
                seen.append(data)
                if "[loading]" in data:
                    # A line came over the stream while the compile was still running.
                    assert prod_stack.job(job["id"])["status"] == "running"
                    prod_stack.client.post(f"/v1/jobs/{job['id']}/cancel")
            elif not line:
                event = None
    assert any("[loading]" in s for s in seen), seen
    assert end == "cancelled"
    assert any("cancelled" in s for s in seen)


def test_listing_filters_and_paginates(prod_stack: Stack, zoo: Path) -> None:
    run = uuid.uuid4().hex[:8]
    ids = [prod_stack.submit(zoo / "mlp" / "model.tar.gz", labels={"run": run}, name=f"page-{i}")["id"]
           for i in range(3)]
    try:
        first = prod_stack.client.get("/v1/jobs", params={"label": f"run:{run}", "limit": 2}).json()
        assert [j["id"] for j in first["items"]] == ids[::-1][:2]  # newest first
        assert first["next_cursor"]
        second = prod_stack.client.get("/v1/jobs", params={
            "label": f"run:{run}", "limit": 2, "cursor": first["next_cursor"]}).json()
        assert [j["id"] for j in second["items"]] == [ids[0]]
        assert second["next_cursor"] is None
        named = prod_stack.client.get("/v1/jobs", params={"name": "page-1"}).json()
        assert [j["id"] for j in named["items"]] == [ids[1]]
        bad = prod_stack.client.get("/v1/jobs", params={"cursor": "not-a-cursor"})
        assert bad.status_code == 400
        assert bad.headers["content-type"].startswith("application/problem+json")
    finally:
        for job_id in ids:  # no need to compile them: cancel, queued or running
            prod_stack.client.post(f"/v1/jobs/{job_id}/cancel")
        for job_id in ids:
            assert prod_stack.wait(job_id, timeout=120)["status"] in ("cancelled", "succeeded")
