"""POST /v1/compile: accepted uploads are stored and queued; every bad upload is a 4xx problem
and leaves nothing behind (no stored file, no job, no queued message, no staging file)."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from service_helpers import (
    assert_nothing_stored,
    assert_problem,
    good_inputs,
    make_tar,
    make_zip,
    npz_bytes,
    upload_files,
)

from kiln_service.config import Settings
from kiln_service.queue import create_celery_app


def _queued_messages(settings: Settings, queue: str, *, expected: int = 0) -> list[dict[str, Any]]:
    """Consume every message on ``queue`` of the embedded transport.

    Waits up to 10 s for each of the ``expected`` messages (the file broker is polled, and a
    loaded machine is slow), then briefly for any extra one that should not be there.
    """
    app = create_celery_app(settings)
    out: list[dict[str, Any]] = []
    with app.connection_for_read() as conn:
        q = conn.SimpleQueue(queue, no_ack=False)
        while True:
            try:
                msg = q.get(timeout=10.0 if len(out) < expected else 0.5)
            except q.Empty:
                break
            out.append({"task": msg.headers["task"], "args": msg.decode()[0]})
            msg.ack()
        q.close()
    return out


async def test_accepts_stores_and_queues(client: httpx.AsyncClient, app: Any, settings: Settings,
                                         two_inputs_tgz: Path) -> None:
    model = two_inputs_tgz.read_bytes()
    inputs = good_inputs()
    resp = await client.post("/v1/compile", files=upload_files(model, inputs), data={
        "flags": "--dynamic-batch-size", "name": "first", "labels": json.dumps({"team": "ml"}),
        "placement": json.dumps({"exclude_ops": ["Sum"]}), "timeout_seconds": "120"})
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert resp.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["target"] == "xla" and job["name"] == "first"
    assert job["labels"] == {"team": "ml"} and job["placement"]["exclude_ops"] == ["Sum"]
    assert job["timeout_seconds"] == 120 and job["flags"] == "--dynamic-batch-size"
    assert job["input_digests"] == {"model": hashlib.sha256(model).hexdigest(),
                                    "example_inputs": hashlib.sha256(inputs).hexdigest()}
    store = app.state.services.artifact_store
    assert store.open_read(f"jobs/{job['id']}/upload/model").read() == model
    assert store.open_read(f"jobs/{job['id']}/upload/example_inputs.npz").read() == inputs
    assert _queued_messages(settings, "kiln.xla", expected=1) == [
        {"task": "kiln.compile", "args": [job["id"]]}]
    assert _queued_messages(settings, "kiln.inf1") == []
    assert [p for p in settings.staging_dir.rglob("*") if p.is_file()] == []
    assert (await client.get(job and f"/v1/jobs/{job['id']}")).json() == job


async def test_inf1_target_goes_to_its_queue_and_defaults_apply(
        client: httpx.AsyncClient, settings: Settings, two_inputs_tgz: Path) -> None:
    resp = await client.post("/v1/compile", files=upload_files(two_inputs_tgz.read_bytes()),
                             data={"target": "inf1", "input_shapes": json.dumps({"ids": [1, 7, 4]})})
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert job["timeout_seconds"] == settings.default_timeout_seconds
    assert job["input_shapes"] == {"ids": [1, 7, 4]} and "example_inputs" not in job["input_digests"]
    assert _queued_messages(settings, "kiln.inf1", expected=1) == [
        {"task": "kiln.compile", "args": [job["id"]]}]


@pytest.mark.parametrize("layout", ["zip-root", "zip-folder", "tar-root", "plain-tar"])
async def test_archive_layouts_accepted(client: httpx.AsyncClient, models_dir: Path,
                                        tmp_path: Path, layout: str) -> None:
    src = models_dir / "keras_dense"
    archive = {
        "zip-root": lambda: make_zip(src, tmp_path / "m.zip"),
        "zip-folder": lambda: make_zip(src, tmp_path / "m.zip", folder="saved"),
        "tar-root": lambda: make_tar(src, tmp_path / "m.tgz", folder=None),
        "plain-tar": lambda: make_tar(src, tmp_path / "m.tar", gz=False),
    }[layout]()
    resp = await client.post("/v1/compile", files=upload_files(archive.read_bytes(),
                             npz_bytes(features=np.zeros((3, 4), np.float32))))
    assert resp.status_code == 202, resp.text


def _tar_with(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _member(name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        return info, data
    return info, None


def _with_saved_model(models_dir: Path, extra: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    pb = (models_dir / "keras_dense" / "saved_model.pb").read_bytes()
    return _tar_with([_member("saved_model.pb", pb), extra])


BAD_UPLOADS = {
    "not_an_archive": (lambda m: (b"this is not an archive at all" * 10, None, {}), 422, "invalid_archive"),
    "no_saved_model": (lambda m: (_tar_with([_member("model/README.txt", b"hi")]), None, {}), 422, "no_saved_model"),
    "dotdot_member": (lambda m: (_with_saved_model(m, _member("../x", b"evil")), None, {}), 422, "unsafe_archive"),
    "absolute_member": (lambda m: (_with_saved_model(m, _member("/etc/x", b"evil")), None, {}), 422, "unsafe_archive"),
    "symlink_member": (lambda m: (_with_saved_model(m, _member("link", kind=tarfile.SYMTYPE, link="/etc/passwd")), None, {}), 422, "unsafe_archive"),
    "hardlink_member": (lambda m: (_with_saved_model(m, _member("hl", kind=tarfile.LNKTYPE, link="saved_model.pb")), None, {}), 422, "unsafe_archive"),
    "device_member": (lambda m: (_with_saved_model(m, _member("dev", kind=tarfile.CHRTYPE)), None, {}), 422, "unsafe_archive"),
    "garbage_saved_model_pb": (lambda m: (_tar_with([_member("saved_model.pb", b"\xff" * 40)]), None, {}), 422, "invalid_saved_model"),
    "unknown_signature": (lambda m: (None, good_inputs(), {"signature": "nope"}), 422, "unknown_signature"),
    "inputs_wrong_name": (lambda m: (None, npz_bytes(x=np.ones((2, 3), np.float32), idz=np.ones((2, 5, 4), np.int32)), {}), 422, "example_inputs_mismatch"),
    "inputs_wrong_dtype": (lambda m: (None, good_inputs(x=np.ones((2, 3), np.float64)), {}), 422, "example_inputs_mismatch"),
    "inputs_unnamed": (lambda m: (None, npz_bytes(arr_0=np.ones((2, 3), np.float32), arr_1=np.ones((2, 5, 4), np.int32)), {}), 422, "example_inputs_mismatch"),
    "inputs_wrong_rank": (lambda m: (None, good_inputs(ids=np.ones((2, 4), np.int32)), {}), 422, "example_inputs_mismatch"),
    "inputs_wrong_fixed_dim": (lambda m: (None, good_inputs(x=np.ones((2, 5), np.float32)), {}), 422, "example_inputs_mismatch"),
    "inputs_pickled_objects": (lambda m: (None, good_inputs(x=np.array([{"a": 1}, None], dtype=object)), {}), 422, "pickled_example_inputs"),
    "inputs_not_npz": (lambda m: (None, b"not an npz", {}), 422, "invalid_example_inputs"),
    "unknown_flags": (lambda m: (None, good_inputs(), {"flags": "--no-such-flag=1"}), 422, "invalid_flags"),
    "unknown_target": (lambda m: (None, good_inputs(), {"target": "tpu"}), 422, "unknown_target"),
    "unknown_dim_without_shapes": (lambda m: (None, None, {}), 422, "input_shape_required"),
    "input_shapes_unknown_name": (lambda m: (None, None, {"input_shapes": json.dumps({"q": [1]})}), 422, "invalid_input_shapes"),
    "labels_not_json": (lambda m: (None, good_inputs(), {"labels": "{oops"}), 422, "invalid_field"),
    "placement_unknown_key": (lambda m: (None, good_inputs(), {"placement": json.dumps({"bogus": 1})}), 422, "invalid_field"),
    "placement_unknown_mode": (lambda m: (None, good_inputs(), {"placement": json.dumps({"mode": "fastest"})}), 422, "invalid_field"),
    "placement_bare_unknown_word": (lambda m: (None, good_inputs(), {"placement": "fastest"}), 422, "invalid_field"),
    "timeout_too_long": (lambda m: (None, good_inputs(), {"timeout_seconds": "999999"}), 422, "invalid_timeout"),
    "inputs_and_shapes_both": (lambda m: (None, good_inputs(), {"input_shapes": json.dumps({"ids": [1, 2, 4]})}), 422, "conflicting_inputs"),
    "unknown_rank_without_shapes": (lambda m: (None, None, {"signature": "other"}), 422, "input_shape_required"),
    "input_shapes_wrong_rank": (lambda m: (None, None, {"input_shapes": json.dumps({"ids": [2, 4]})}), 422, "invalid_input_shapes"),
    "unknown_form_field": (lambda m: (None, good_inputs(), {"colour": "blue"}), 422, "unknown_field"),
}


@pytest.mark.parametrize(("field", "expected"), [
    ("all", {"mode": "all", "include_ops": [], "exclude_ops": [], "include_names": [], "exclude_names": []}),
    (json.dumps({"mode": "measured", "exclude_ops": ["Sum"]}), {"mode": "measured", "exclude_ops": ["Sum"]}),
])
async def test_placement_mode_field(field: str, expected: dict[str, Any], client: httpx.AsyncClient,
                                    two_inputs_tgz: Path) -> None:
    resp = await client.post("/v1/compile", files=upload_files(two_inputs_tgz.read_bytes(), good_inputs()),
                             data={"placement": field})
    assert resp.status_code == 202, resp.text
    placement = resp.json()["placement"]
    assert {k: placement[k] for k in expected} == expected


@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
async def test_bad_upload_is_a_problem_and_nothing_is_stored(
        case: str, client: httpx.AsyncClient, app: Any, settings: Settings,
        models_dir: Path, two_inputs_tgz: Path) -> None:
    build, status, code = BAD_UPLOADS[case]
    model, inputs, data = build(models_dir)
    resp = await client.post("/v1/compile", files=upload_files(model or two_inputs_tgz.read_bytes(), inputs),
                             data=data)
    body = assert_problem(resp, status, code)
    assert_nothing_stored(app, settings)
    if case == "unknown_signature":
        assert "other" in body["detail"] and "serving_default" in body["detail"]
    if case == "unknown_dim_without_shapes":
        assert "'ids'" in body["detail"] and "'x'" not in body["detail"]
    if case == "inputs_unnamed":  # np.savez(path, a, b): the detail says how to name them
        assert "np.savez(path, ids=..., x=...)" in body["detail"]
    if case == "inputs_wrong_dtype":
        assert "'x'" in body["detail"] and "float64" in body["detail"]
    if case == "unknown_target":
        assert "xla" in body["detail"] and "inf1" in body["detail"]
    if case == "unknown_flags":
        assert "--no-such-flag" in body["detail"]


def test_zip_with_dotdot_member_rejected(tmp_path: Path) -> None:
    from kiln_service.errors import UploadRejectedError
    from kiln_service.ingest import inspect_archive

    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("saved_model.pb", b"")
        zf.writestr("../../x", b"evil")
    with pytest.raises(UploadRejectedError) as exc:
        inspect_archive(path, max_members=10, max_total_bytes=10**6, scratch=tmp_path)
    assert exc.value.code == "unsafe_archive" and "'..'" in exc.value.detail


async def test_missing_model_part(client: httpx.AsyncClient, app: Any, settings: Settings) -> None:
    resp = await client.post("/v1/compile", files={"example_inputs": ("i.npz", good_inputs())})
    assert_problem(resp, 422, "missing_model")
    assert_nothing_stored(app, settings)


async def test_not_multipart_is_415(client: httpx.AsyncClient) -> None:
    assert_problem(await client.post("/v1/compile", json={"model": "x"}), 415, "multipart_required")


class TestSizeCap:
    @pytest.fixture
    def app_settings(self, tmp_path: Path) -> Settings:
        return Settings(data_dir=tmp_path / "kiln", max_upload_bytes=4096)

    async def test_file_over_the_cap_is_413_and_nothing_stored(
            self, client: httpx.AsyncClient, app: Any, app_settings: Settings,
            two_inputs_tgz: Path) -> None:
        model = two_inputs_tgz.read_bytes()
        assert len(model) > 4096
        resp = await client.post("/v1/compile", files=upload_files(model))
        body = assert_problem(resp, 413, "upload_too_large")
        assert "4096" in body["detail"]
        assert_nothing_stored(app, app_settings)



class TestBodyCap:
    @pytest.fixture
    def app_settings(self, tmp_path: Path) -> Settings:
        return Settings(data_dir=tmp_path / "kiln", max_upload_bytes=4096, max_request_bytes=8192)

    async def test_body_over_declared_length_is_refused_up_front(
            self, client: httpx.AsyncClient, app: Any, app_settings: Settings) -> None:
        big = b"0" * (3 * 4096)
        resp = await client.post("/v1/compile", content=big, headers={
            "content-type": "multipart/form-data; boundary=xyz"})
        assert_problem(resp, 413, "request_too_large")
        assert_nothing_stored(app, app_settings)


def test_api_modules_never_import_tensorflow(tmp_path: Path) -> None:
    # A fresh interpreter: other tests of this pytest process may well have loaded TensorFlow.
    code = (
        "import sys\n"
        "from kiln_service.config import Settings\n"
        "from kiln_service.main import create_app\n"
        "import kiln_service.ingest, kiln_service.routes.compile\n"
        f"create_app(Settings(data_dir={str(tmp_path)!r}))\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras'))\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"the API loaded {result.stdout.strip()}"


async def test_chunked_body_over_cap_without_length_is_413(tmp_path: Path) -> None:
    from kiln_service import migrations
    from kiln_service.main import create_app

    settings = Settings(data_dir=tmp_path / "kiln", max_upload_bytes=4096, max_request_bytes=8192)
    migrations.upgrade(settings.resolved_database_url)
    app = create_app(settings)

    async def body() -> Any:
        yield b"--xyz\r\nContent-Disposition: form-data; name=\"flags\"\r\n\r\n"
        for _ in range(20):
            yield b"a" * 1024

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        resp = await c.post("/v1/compile", content=body(),
                            headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert "content-length" not in resp.request.headers
    assert_problem(resp, 413, "request_too_large")
    assert_nothing_stored(app, settings)


async def test_unknown_rank_input_accepted_with_input_shapes(
        client: httpx.AsyncClient, two_inputs_tgz: Path) -> None:
    resp = await client.post("/v1/compile", files=upload_files(two_inputs_tgz.read_bytes()),
                             data={"signature": "other", "input_shapes": json.dumps({"z": [2, 2]})})
    assert resp.status_code == 202, resp.text
    assert resp.json()["signature"] == "other" and resp.json()["input_shapes"] == {"z": [2, 2]}
