"""The compile cache end to end: ``kiln-service up`` (API and worker) with a real compile.

The bundled MLP is compiled once; the same model re-packed as a .zip is answered at submission
from the cache with the very artifacts of the first job, which stay downloadable after that job
is deleted. (Misses on any change: tests/service/test_service_cache_keys.py.)
"""

from __future__ import annotations

import asyncio
import hashlib
import tarfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from integration_support import Stack

from _support.archives import tar_gz_as_zip
from kiln_client import AsyncClient, AsyncJob, Client, cli

ROOT = Path(__file__).resolve().parents[2]
#: the compile cache on (the stacks of other tests have it off)
EMBEDDED_ENV = {"KILN_CACHE_MAX_BYTES": str(1 << 30)}
MODEL = ROOT / "examples" / "mlp" / "mlp.tar.gz"
INPUTS = ROOT / "examples" / "mlp" / "example_inputs.npz"


def test_cache_round_trip_with_a_real_compile(embedded_stack: Stack, tmp_path: Path) -> None:
    stack = embedded_stack
    first = stack.wait(stack.submit(MODEL, INPUTS)["id"])
    assert first["status"] == "succeeded", first.get("failure")
    assert first["cache"] == {"hit": False, "job": None}
    toolchain = stack.client.get("/v1/workers").json()["items"][0]["toolchains"]["xla"]
    assert toolchain["tensorflow"][0].isdigit() and toolchain["backend"] == "xla"

    hit = stack.submit(tar_gz_as_zip(MODEL, tmp_path / "same.zip"), INPUTS)
    assert hit["status"] == "succeeded" and hit["cache"] == {"hit": True, "job": first["id"]}
    assert hit["artifacts"] == first["artifacts"] and hit["report"] == first["report"]

    assert stack.client.delete(f"/v1/jobs/{first['id']}").status_code == 204
    compiled = stack.download(hit["id"], "compiled_model.tar.gz", tmp_path / "compiled.tar.gz")
    want = next(a["sha256"] for a in hit["artifacts"] if a["name"] == "compiled_model.tar.gz")
    assert hashlib.sha256(compiled.read_bytes()).hexdigest() == want


def test_sdk_asks_by_digest_then_uploads_on_a_miss(embedded_stack: Stack, tmp_path: Path) -> None:
    # The SDK on a SavedModel folder: a digest-only request first; on its 409 upload_required
    # the upload, which compiles; the same compile() again is answered without any upload.
    folder = tmp_path / "mlp"
    with tarfile.open(MODEL) as tar:
        tar.extractall(folder, filter="data")
    (model_dir,) = [p.parent for p in folder.rglob("saved_model.pb")]
    with np.load(INPUTS) as arrays:  # other values than the other tests': a miss first
        inputs = {name: arrays[name] + 0.25 for name in arrays.files}
    sent: list[tuple[bool, int]] = []  # (the model part was sent, status) per POST /v1/compile

    def record(response: httpx.Response) -> None:
        if response.request.method == "POST" and response.request.url.path == "/v1/compile":
            response.request.read()
            sent.append((b'name="model"' in response.request.content, response.status_code))

    http = httpx.Client(event_hooks={"response": [record]})
    with Client(embedded_stack.url, http_client=http) as client:
        first = client.compile(model_dir, example_inputs=inputs, progress=False)
        assert sent == [(False, 409), (True, 202)]
        assert first.status.value == "succeeded" and first.attempts == 1
        assert first.cache is not None and not first.cache.hit

        hit = client.compile(model_dir, example_inputs=inputs, progress=False)
        assert sent[2:] == [(False, 202)], "a hit uploads nothing"
        assert hit.cache is not None and (hit.cache.hit, hit.cache.job) == (True, first.id)
        assert hit.artifacts == first.artifacts

        again = client.compile(model_dir, example_inputs=inputs, progress=False, wait=False,
                               cache=False)
        assert sent[3:] == [(True, 202)] and again.cache is None
        again.cancel()
    http.close()

    async def async_hit() -> AsyncJob:
        async def hook(response: httpx.Response) -> None:
            record(response)

        async with httpx.AsyncClient(event_hooks={"response": [hook]}) as async_http, \
                AsyncClient(embedded_stack.url, http_client=async_http) as async_client:
            return await async_client.compile(model_dir, example_inputs=inputs, progress=False)

    hit_async = asyncio.run(async_hit())
    assert sent[4:] == [(False, 202)] and hit_async.cache is not None
    assert (hit_async.cache.hit, hit_async.cache.job) == (True, first.id)


def test_cli_no_cache_uploads(embedded_stack: Stack, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    # `kiln compile --no-cache`: no digest-only request (it would be refused with cache=false),
    # the model is uploaded and a job that does not use the cache is queued.
    assert cli.main(["--url", embedded_stack.url, "compile", str(MODEL), "--inputs", str(INPUTS),
                     "--no-cache", "--no-wait"]) == 0
    job_id = capsys.readouterr().out.strip()
    job = embedded_stack.job(job_id)
    assert job["cache"] is None and job["status"] in ("queued", "running")
    embedded_stack.client.post(f"/v1/jobs/{job_id}/cancel")
