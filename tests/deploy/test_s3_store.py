"""S3ArtifactStore against a real S3-compatible server (moto server mode, separate process)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from deploy_support import S3_ENV, free_port

from kiln_service.errors import ArtifactNotFoundError, PayloadTooLargeError, StoreError
from kiln_service.stores.artifacts import ArtifactStore
from kiln_service.stores.s3 import S3ArtifactStore

MIB = 1024 * 1024


def chunked(data: bytes, size: int) -> Iterator[bytes]:
    """Yield ``data`` in chunks of ``size`` bytes, as an upload would arrive."""
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.fixture
def store(s3_client: Any, bucket: str) -> S3ArtifactStore:
    return S3ArtifactStore(bucket, "kiln/artifacts", client=s3_client, part_size=5 * MIB)


def pending_uploads(s3_client: Any, bucket: str) -> list[str]:
    pages = s3_client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket)
    return [up["Key"] for page in pages for up in page.get("Uploads", [])]


def all_keys(s3_client: Any, bucket: str) -> list[str]:
    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def test_small_stream_round_trip_keeps_sha256(store: S3ArtifactStore, s3_client: Any, bucket: str) -> None:
    data = os.urandom(300_000)
    size, sha = store.put_stream("jobs/j1/report.json", chunked(data, 65536), max_bytes=MIB)
    assert (size, sha) == (len(data), hashlib.sha256(data).hexdigest())
    assert store.exists("jobs/j1/report.json")
    assert store.size("jobs/j1/report.json") == len(data)
    assert store.sha256("jobs/j1/report.json") == sha
    head = s3_client.head_object(Bucket=bucket, Key="kiln/artifacts/default/jobs/j1/report.json")
    assert head["Metadata"]["sha256"] == sha
    with store.open_read("jobs/j1/report.json") as f:
        assert f.read() == data


def test_multipart_object_over_threshold(
    store: S3ArtifactStore, s3_client: Any, bucket: str, tmp_path: Path
) -> None:
    data = os.urandom(12 * MIB + 12345)  # three parts of 5 MiB (the last one short)
    part_sizes: list[int] = []

    def record_part(params: dict[str, Any], **_: Any) -> None:
        part_sizes.append(len(params["Body"]))

    s3_client.meta.events.register("provide-client-params.s3.UploadPart", record_part)
    try:
        size, sha = store.put_stream("jobs/big/upload/model", chunked(data, 1_000_000), max_bytes=20 * MIB)
    finally:
        s3_client.meta.events.unregister("provide-client-params.s3.UploadPart", record_part)
    assert size == len(data)
    assert sha == hashlib.sha256(data).hexdigest()
    # Streamed: three parts, none larger than the part size (never the whole object at once).
    assert part_sizes == [5 * MIB, 5 * MIB, len(data) - 10 * MIB]
    head = s3_client.head_object(Bucket=bucket, Key=store.object_key("jobs/big/upload/model"))
    assert head["Metadata"]["sha256"] == sha
    assert head["ContentLength"] == len(data)
    assert pending_uploads(s3_client, bucket) == []

    store.get_to_file("jobs/big/upload/model", tmp_path / "model")
    assert (tmp_path / "model").read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"], "no temporary file left behind"
    assert b"".join(store.iter_chunks("jobs/big/upload/model", MIB)) == data


def test_put_file_and_seekable_read(store: S3ArtifactStore, tmp_path: Path) -> None:
    data = os.urandom(6 * MIB)
    src = tmp_path / "compiled_model.tar.gz"
    src.write_bytes(data)
    assert store.put_file("jobs/j2/compiled_model.tar.gz", src) == (
        len(data), hashlib.sha256(data).hexdigest(),
    )
    with store.open_read("jobs/j2/compiled_model.tar.gz") as f:
        assert f.seekable()
        f.seek(5 * MIB + 7)
        assert f.read(100) == data[5 * MIB + 7 : 5 * MIB + 107]
        f.seek(-10, os.SEEK_END)
        assert f.read() == data[-10:]
        f.seek(3)
        assert f.read(5) == data[3:8]


@pytest.mark.parametrize("total", [3 * MIB, 11 * MIB], ids=["single-request", "multipart"])
def test_max_bytes_exceeded_leaves_nothing(
    store: S3ArtifactStore, s3_client: Any, bucket: str, total: int
) -> None:
    data = os.urandom(total)
    with pytest.raises(PayloadTooLargeError) as info:
        store.put_stream("jobs/j3/upload/model", chunked(data, MIB), max_bytes=total - 1)
    assert info.value.status_code == 413
    assert f"model is over the limit of {total - 1} bytes" in info.value.detail
    assert not store.exists("jobs/j3/upload/model")
    assert all_keys(s3_client, bucket) == []
    assert pending_uploads(s3_client, bucket) == []


def test_failing_stream_aborts_multipart(store: S3ArtifactStore, s3_client: Any, bucket: str) -> None:
    def broken() -> Iterator[bytes]:
        yield os.urandom(6 * MIB)  # enough for one part to be sent
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        store.put_stream("jobs/j4/upload/model", broken(), max_bytes=None)
    assert all_keys(s3_client, bucket) == []
    assert pending_uploads(s3_client, bucket) == []


def test_delete_prefix_is_folder_scoped(store: S3ArtifactStore) -> None:
    for key in ["jobs/ab/a", "jobs/ab/sub/b", "jobs/abc/c"]:
        store.put_stream(key, [key.encode()], max_bytes=None)
    assert store.list_prefix("jobs/ab/") == ["jobs/ab/a", "jobs/ab/sub/b"]
    assert store.delete_prefix("jobs/ab") == 2
    assert not store.exists("jobs/ab/a")
    assert not store.exists("jobs/ab/sub/b")
    assert store.exists("jobs/abc/c")
    assert store.delete_prefix("jobs/ab") == 0


def test_delete_prefix_reaps_pending_uploads(store: S3ArtifactStore, s3_client: Any, bucket: str) -> None:
    # A worker killed mid-upload leaves a multipart upload behind.
    s3_client.create_multipart_upload(Bucket=bucket, Key=store.object_key("jobs/dead/upload/model"))
    assert pending_uploads(s3_client, bucket) == [store.object_key("jobs/dead/upload/model")]
    store.delete_prefix("jobs/dead")
    assert pending_uploads(s3_client, bucket) == []


def test_tenant_prefixes_keys(store: S3ArtifactStore, s3_client: Any, bucket: str) -> None:
    acme = store.with_tenant("acme")
    store.put_stream("jobs/j5/report.json", [b"default"], max_bytes=None)
    acme.put_stream("jobs/j5/report.json", [b"acme"], max_bytes=None)
    assert all_keys(s3_client, bucket) == [
        "kiln/artifacts/acme/jobs/j5/report.json",
        "kiln/artifacts/default/jobs/j5/report.json",
    ]
    with acme.open_read("jobs/j5/report.json") as f:
        assert f.read() == b"acme"
    acme.delete_prefix("jobs/j5")
    assert store.exists("jobs/j5/report.json"), "one tenant's delete must not touch another's"
    with pytest.raises(ValueError, match="invalid tenant"):
        store.with_tenant("../other")


def test_presigned_url_download(store: S3ArtifactStore) -> None:
    data = os.urandom(70_000)
    store.put_stream("jobs/j6/compiled_model.tar.gz", chunked(data, 8192), max_bytes=None)
    url = store.presign_url("jobs/j6/compiled_model.tar.gz", expires=60)
    assert "Signature" in url or "X-Amz-Signature" in url
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    assert response.content == data
    tampered = url.replace("j6", "j7")
    assert httpx.get(tampered, timeout=10).status_code in (403, 404)
    with pytest.raises(ValueError, match="expires"):
        store.presign_url("jobs/j6/compiled_model.tar.gz", expires=0)


def test_missing_key_errors(store: S3ArtifactStore, tmp_path: Path) -> None:
    key = "jobs/nope/report.json"
    assert store.exists(key) is False
    for call in (
        lambda: store.size(key),
        lambda: store.open_read(key),
        lambda: store.get_to_file(key, tmp_path / "out"),
        lambda: store.presign_url(key),
        lambda: list(store.iter_chunks(key)),
    ):
        with pytest.raises(ArtifactNotFoundError) as info:
            call()
        assert info.value.status_code == 404
        assert key in info.value.detail
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("key", ["", "/abs", "jobs/../x", "jobs//x", "jobs/./x"])
def test_bad_keys_refused(store: S3ArtifactStore, key: str) -> None:
    with pytest.raises(ValueError, match="unsafe artifact key"):
        store.put_stream(key, [b"x"], max_bytes=None)


def test_from_url_uses_aws_endpoint_url(s3_env: str, bucket: str) -> None:
    store = S3ArtifactStore.from_url(f"s3://{bucket}/deploy?addressing_style=path&part_size_mb=5&tenant=t1")
    assert (store.bucket, store.prefix, store.tenant, store.part_size) == (bucket, "deploy", "t1", 5 * MIB)
    store.put_stream("jobs/j8/x", [b"hello"], max_bytes=10)
    assert store.object_key("jobs/j8/x") == "deploy/t1/jobs/j8/x"
    with store.open_read("jobs/j8/x") as f:
        assert f.read() == b"hello"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:///tmp/x", "not an S3 storage URL"),
        ("s3:///prefix", "not an S3 storage URL"),
        ("s3://b/p?colour=red", "unknown option"),
        ("s3://bucket/p?part_size_mb=1", "at least 5 MiB"),
        ("s3://bucket/p?part_size_mb=big", "must be an integer"),
        ("s3://Bad_Bucket/p", "invalid S3 bucket name"),
    ],
)
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        S3ArtifactStore.from_url(url)


def test_matches_artifact_store_protocol_and_probe(store: S3ArtifactStore, s3_client: Any, bucket: str) -> None:
    assert isinstance(store, ArtifactStore)
    assert store.url == f"s3://{bucket}/kiln/artifacts"
    store.check_writable()
    assert all_keys(s3_client, bucket) == [], "the probe object must be removed"


def test_unreachable_endpoint_is_a_store_error(bucket: str) -> None:
    import boto3
    from botocore.config import Config

    dead = boto3.client(
        "s3", endpoint_url=f"http://127.0.0.1:{free_port()}", region_name=S3_ENV["AWS_REGION"],
        aws_access_key_id="x", aws_secret_access_key="y",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1),
    )
    store = S3ArtifactStore(bucket, client=dead)
    with pytest.raises(StoreError, match="object store error") as info:
        store.check_writable()
    assert info.value.status_code == 503


def test_open_artifact_store_dispatches_s3_urls(s3_env: str, bucket: str) -> None:
    from kiln_service.stores.artifacts import open_artifact_store

    store = open_artifact_store(f"s3://{bucket}/kiln?addressing_style=path")
    assert isinstance(store, S3ArtifactStore)
    assert (store.bucket, store.prefix, store.tenant) == (bucket, "kiln", "default")
    store.check_writable()
