"""The compile cache end to end: ``kiln-service up`` (API and worker) with a real compile.

The bundled MLP is compiled once; the same model re-packed as a .zip is answered at submission
from the cache with the very artifacts of the first job, which stay downloadable after that job
is deleted. (Misses on any change: tests/service/test_service_cache_keys.py.)
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from integration_support import Stack

from _support.archives import tar_gz_as_zip

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
