"""S3 locations as SageMaker Neo users expect, against a real S3 server (moto) and a real
``kiln-service up`` (API and worker, one real compile of the bundled example model):
a model taken from ``s3://`` through the upload's checks, artifacts also written to an
``output_location``, presigned-URL downloads the SDK follows, and unallowed buckets refused."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from deploy_support import REPO, S3_ENV, free_port

import kiln_client
from _support.processes import BIN, quiet_env, start, wait_ready
from kiln_client.errors import ValidationError

pytestmark = pytest.mark.integration
EXAMPLE = REPO / "examples" / "mlp"


@pytest.fixture
def kiln(tmp_path: Path, bucket: str, moto_endpoint: str) -> Iterator[str]:
    """``kiln-service up`` storing artifacts in ``bucket``, which jobs may also name."""
    env = quiet_env(**S3_ENV, AWS_ENDPOINT_URL=moto_endpoint, KILN_AUTH="off",
                    KILN_S3_ALLOWED_BUCKETS=f"{bucket},kiln-other-allowed",
                    KILN_STORAGE_URL=f"s3://{bucket}/kiln?addressing_style=path")
    url = f"http://127.0.0.1:{free_port()}"
    up = start("up", [str(BIN / "kiln-service"), "up", "--port", url.rsplit(":", 1)[1],
                      "--data-dir", str(tmp_path / "kiln")], env, tmp_path)
    try:
        wait_ready(url, [up])
        yield url
    finally:
        up.stop(grace=60)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def refused(client: kiln_client.Client, **kwargs: Any) -> Any:
    with pytest.raises(ValidationError) as info:
        client.compile(wait=False, progress=False, **kwargs)
    return info.value


def test_s3_model_in_compiled_out_and_presigned_downloads(
        kiln: str, bucket: str, s3_client: Any, moto_endpoint: str, tmp_path: Path) -> None:
    s3_client.upload_file(str(EXAMPLE / "mlp.tar.gz"), bucket, "models/mlp.tar.gz")
    s3_client.put_object(Bucket=bucket, Key="models/not-an-archive.tar.gz", Body=b"hello")
    seen: list[str] = []
    http = httpx.Client(event_hooks={"request": [lambda r: seen.append(str(r.url))]})
    client = kiln_client.Client(kiln, http_client=http)
    inputs = str(EXAMPLE / "example_inputs.npz")

    # Refusals: unallowed buckets (saying how to allow them), a missing key, the upload's checks.
    error = refused(client, model="s3://not-allowed-bucket/m.tar.gz", example_inputs=inputs)
    assert error.code == "bucket_not_allowed" and "KILN_S3_ALLOWED_BUCKETS" in str(error)
    error = refused(client, model=f"s3://{bucket}/models/mlp.tar.gz", example_inputs=inputs,
                    output_location="s3://not-allowed-bucket/out")
    assert error.code == "bucket_not_allowed" and "output_location" in str(error)
    assert refused(client, model=f"s3://{bucket}/models/missing.tar.gz",
                   example_inputs=inputs).code == "model_source_not_found"
    assert refused(client, model=f"s3://{bucket}/models/not-an-archive.tar.gz",
                   example_inputs=inputs).code == "invalid_archive"

    job = client.compile(f"s3://{bucket}/models/mlp.tar.gz", example_inputs=inputs,
                         output_location=f"s3://{bucket}/neo-out/", progress=False)
    assert job.status is kiln_client.JobStatus.SUCCEEDED
    assert job.model_source == f"s3://{bucket}/models/mlp.tar.gz"
    assert job.input_digests["model"] == sha256((EXAMPLE / "mlp.tar.gz").read_bytes())
    (export,) = job.exports
    assert (export.kind, export.status) == ("s3", "succeeded")
    assert export.location == f"s3://{bucket}/neo-out/{job.id}/"
    for artifact in job.artifacts:
        if artifact.name == "compile.log":
            continue  # written before the export's own log lines
        body = s3_client.get_object(Bucket=bucket, Key=f"neo-out/{job.id}/{artifact.name}")["Body"]
        assert sha256(body.read()) == artifact.sha256, artifact.name

    # ?redirect=true answers 307 to a presigned URL of the object store, readable without a key.
    report = next(a for a in job.artifacts if a.name == "report.json")
    answer = httpx.get(f"{kiln}/v1/jobs/{job.id}/artifacts/report.json?redirect=true")
    assert answer.status_code == 307
    location = answer.headers["location"]
    assert location.startswith(moto_endpoint) and "Signature" in location
    assert sha256(httpx.get(location).content) == report.sha256
    assert httpx.get(f"{kiln}/v1/jobs/{job.id}/artifacts/report.json").status_code == 200

    # The SDK follows it: the bytes come from the object store, checked against the sha256.
    seen.clear()
    path = job.download_artifact("compiled_model.tar.gz", tmp_path)
    compiled = next(a for a in job.artifacts if a.name == "compiled_model.tar.gz")
    assert sha256(path.read_bytes()) == compiled.sha256
    assert any(u.startswith(moto_endpoint) for u in seen), seen
    http.close()
