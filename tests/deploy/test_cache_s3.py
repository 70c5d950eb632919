"""The compile cache over the S3 artifact store (moto's server): a hit serves and presigns the
source job's objects, and keeps serving them after the source job is deleted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from _support.cache_jobs import TOOLCHAIN, finish_like_a_worker
from kiln_service import migrations
from kiln_service.config import Settings
from kiln_service.main import create_app

ROOT = Path(__file__).resolve().parents[2]
FILES = {"model": ("mlp.tar.gz", (ROOT / "examples" / "mlp" / "mlp.tar.gz").read_bytes()),
         "example_inputs": ("x.npz", (ROOT / "examples" / "mlp" / "example_inputs.npz").read_bytes())}


async def test_hit_serves_and_presigns_the_source_objects(
        s3_env: str, bucket: str, s3_client: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_AUTH", "off")
    url = f"sqlite:///{tmp_path / 'kiln.db'}"
    migrations.upgrade(url)
    settings = Settings(data_dir=tmp_path / "kiln", database_url=url, auth="off",
                        storage_url=f"s3://{bucket}/kiln?addressing_style=path")
    app = create_app(settings)
    services = app.state.services
    services.job_store.register_worker(worker_id="kiln-xla@test", targets=["xla"], host="t",
                                       pid=1, version="0", toolchains={"xla": TOOLCHAIN})
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://kiln.test") as http:
        first = (await http.post("/v1/compile", files=FILES)).json()
        finish_like_a_worker(services.job_store, services.artifact_store, first["id"],
                             max_bytes=settings.cache_max_bytes)
        hit = (await http.post("/v1/compile", files=FILES)).json()
        assert hit["cache"] == {"hit": True, "job": first["id"]}
        assert (await http.delete(f"/v1/jobs/{first['id']}")).status_code == 204
        path = f"/v1/jobs/{hit['id']}/artifacts/compiled_model.tar.gz"
        want = b"compiled " + first["id"].encode()
        assert (await http.get(path)).content == want
        redirect = await http.get(path, params={"redirect": "true"})
    assert redirect.status_code == 307
    assert httpx.get(redirect.headers["location"]).content == want
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert not any(hit["id"] in k for k in keys), "a hit stores nothing of its own"
    assert not any(f"{first['id']}/upload/" in k for k in keys), "the source's upload went"
    services.job_store.dispose()
