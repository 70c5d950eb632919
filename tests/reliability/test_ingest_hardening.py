"""Issue 10, point 4: ingest hardening. A disk that fills while an upload is spooled or stored
(a real, small tmpfs), a body that stops arriving (a raw socket against a real ``kiln-service
serve``), a malformed multipart ``Content-Type``, and archive member names that collide when case
is ignored, hold control characters or are not UTF-8. Each is answered as a problem with a clear
message, leaves nothing stored, and the next upload is accepted."""

from __future__ import annotations

import io
import json
import os
import socket
import tarfile
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fault_support import Tmpfs, wait_for
from ingest_support import (
    SAVED_MODEL_PB,
    assert_problem,
    file_entry,
    model_tar,
    patch_central_directory,
    running_api,
    settings_for,
    stored_files,
    zip_bytes,
)
from integration_support import BIN, base_env, free_port, start, wait_ready

from kiln_service.config import Settings

ROOT = Path(__file__).resolve().parents[2]
MLP = ROOT / "examples" / "mlp" / "mlp.tar.gz"
INPUTS = ROOT / "examples" / "mlp" / "example_inputs.npz"


def _good_files() -> dict[str, Any]:
    return {"model": ("m.tar.gz", MLP.read_bytes()), "example_inputs": ("x.npz", INPUTS.read_bytes())}


async def _refused_then_next_accepted(app: Any, client: httpx.AsyncClient, settings: Settings,
                                      resp: httpx.Response, status: int, code: str) -> str:
    """The refusal is the expected problem, nothing is stored, and a good upload then passes."""
    detail = str(assert_problem(resp, status, code)["detail"])
    assert stored_files(settings) == []
    assert app.state.services.job_store.list_jobs().items == []
    nxt = await client.post("/v1/compile", files=_good_files())
    assert nxt.status_code == 202, nxt.text
    assert [j.id for j in app.state.services.job_store.list_jobs().items] == [nxt.json()["id"]]
    return detail


def _zip_with_raw_name(raw: bytes, *, utf8_flag: bool) -> bytes:
    """A SavedModel zip with one more member whose stored name is exactly ``raw``."""
    placeholder = b"model/" + b"N" * (len(raw) - len(b"model/"))
    data = zip_bytes([("model/saved_model.pb", SAVED_MODEL_PB), (placeholder.decode(), b"x")])
    data = data.replace(placeholder, raw)
    return patch_central_directory(data, raw, flag_bits=0x800) if utf8_flag else data


NFC, NFD = unicodedata.normalize("NFC", "model/café"), unicodedata.normalize("NFD", "model/café")

#: case → (model archive, words the 422's detail must hold)
NAME_CASES: dict[str, tuple[bytes, str]] = {
    "tar_files_differ_by_case": (
        model_tar(file_entry("model/assets/Vocab.txt"), file_entry("model/assets/vocab.txt")),
        "differ only by letter case"),
    "tar_folders_differ_by_case": (
        model_tar(file_entry("model/Variables/a"), file_entry("model/variables/b")),
        "differ only by letter case"),
    "tar_saved_model_pb_upper": (model_tar(file_entry("model/SAVED_MODEL.PB")),
                                 "differ only by letter case"),
    "tar_unicode_forms": (model_tar(file_entry(NFC), file_entry(NFD)), "Unicode normalisation"),
    "tar_crlf": (model_tar(file_entry("model/assets/a\r\nb.txt")), "control character U+000D"),
    "tar_lf": (model_tar(file_entry("model/assets/a\nb")), "control character U+000A"),
    "tar_escape_sequence": (model_tar(file_entry("model/\x1b[2Jx")), "control character U+001B"),
    "tar_del": (model_tar(file_entry("model/a\x7f")), "control character U+007F"),
    "tar_not_utf8": (model_tar(file_entry("model/assets/\udcff\udcfe.txt")), "not valid UTF-8"),
    "zip_not_utf8": (_zip_with_raw_name(b"model/\xff\xfe.txt", utf8_flag=False), "not valid UTF-8"),
    "zip_flagged_utf8_but_not": (_zip_with_raw_name(b"model/\xff\xfe.txt", utf8_flag=True),
                                 "not valid UTF-8"),
    "zip_differ_by_case": (zip_bytes([("model/saved_model.pb", SAVED_MODEL_PB),
                                      ("model/A.txt", b"1"), ("model/a.txt", b"2")]),
                           "differ only by letter case"),
    "zip_crlf": (zip_bytes([("model/saved_model.pb", SAVED_MODEL_PB), ("model/x\r\n", b"1")]),
                 "control character U+000D"),
}


@pytest.mark.parametrize("case", sorted(NAME_CASES))
async def test_ingest_member_names_refused_with_422(case: str, tmp_path: Path) -> None:
    data, words = NAME_CASES[case]
    settings = settings_for(tmp_path / "kiln")
    async with running_api(settings) as (app, client):
        resp = await client.post("/v1/compile", files={"model": ("m.tgz", data)})
        detail = await _refused_then_next_accepted(app, client, settings, resp, 422, "unsafe_archive")
    assert words in detail, detail


def test_ingest_names_kept_as_utf8_text(tmp_path: Path) -> None:
    # Non-ASCII names that are valid UTF-8 pass, written flagged (zipfile flags the local header
    # and the central directory) or not (older tools).
    from kiln_service import ingest

    for data in (model_tar(file_entry("model/assets/größe.txt")),
                 _zip_with_raw_name("model/größe.txt".encode(), utf8_flag=False),
                 zip_bytes([("model/saved_model.pb", SAVED_MODEL_PB), ("model/größe.txt", b"x")])):
        path = tmp_path / "m"
        path.write_bytes(data)
        assert ingest.inspect_archive(path, max_members=10, max_total_bytes=1 << 20,
                                      scratch=tmp_path).root == "model"


def _multipart(boundary: str) -> bytes:
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"; filename=\"m\"\r\n\r\n"
            ).encode() + MLP.read_bytes() + f"\r\n--{boundary}--\r\n".encode()


@pytest.mark.parametrize(("content_type", "body", "words"), [
    ("multipart/form-data", _multipart("kiln"), "no boundary parameter"),
    ("multipart/form-data; boundary=", _multipart("kiln"), "no boundary parameter"),
    ("multipart/form-data; boundary=" + "b" * 71, _multipart("b" * 71), "1 to 70"),
    ("multipart/form-data; boundary=" + "b" * 5000, _multipart("b" * 5000), "1 to 70"),
    ('multipart/form-data; boundary="ends with space "', _multipart("ends with space "), "1 to 70"),
    ("multipart/form-data; boundary=a{b}", _multipart("a{b}"), "1 to 70"),
])
async def test_ingest_malformed_boundary_is_400(tmp_path: Path, content_type: str, body: bytes,
                                                words: str) -> None:
    settings = settings_for(tmp_path / "kiln")
    async with running_api(settings) as (app, client):
        resp = await client.post("/v1/compile", content=body, headers={"content-type": content_type})
        detail = await _refused_then_next_accepted(app, client, settings, resp, 400,
                                                   "invalid_multipart")
    assert words in detail, detail


async def test_ingest_longest_rfc_boundary_accepted(tmp_path: Path) -> None:
    boundary = "'()+_,-./:=? " * 5 + "b" * 5  # 70 characters, every class RFC 2046 allows
    assert len(boundary) == 70
    async with running_api(settings_for(tmp_path / "kiln")) as (_, client):
        resp = await client.post("/v1/compile", content=_multipart(boundary), headers={
            "content-type": f'multipart/form-data; boundary="{boundary}"'})
    assert resp.status_code == 202, resp.text


# --- a full disk, for real: the data dir is a small tmpfs ----------------------------------------

@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Tmpfs]:
    """A 24 MiB tmpfs as the whole data dir (database, broker, staging, artifacts)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI and the development machines run as root)")
    disk = Tmpfs(tmp_path / "kiln", 24)
    try:
        yield disk
    finally:
        disk.unmount()


def _padded_mlp(pad_bytes: int) -> bytes:
    """The example SavedModel with an incompressible asset of ``pad_bytes``: a valid model."""
    buf = io.BytesIO()
    with tarfile.open(MLP) as src, tarfile.open(fileobj=buf, mode="w:gz") as out:
        for member in src:
            out.addfile(member, src.extractfile(member) if member.isfile() else None)
        pad = tarfile.TarInfo("mlp/assets/pad.bin")
        pad.size = pad_bytes
        out.addfile(pad, io.BytesIO(os.urandom(pad_bytes)))
    return buf.getvalue()


@pytest.mark.parametrize(("where", "model"), [
    # 40 MiB cannot even be spooled; 14 MiB is spooled, then copying it into the store fills it.
    ("spooling", os.urandom(40 << 20)),
    ("storing", _padded_mlp(14 << 20)),
])
async def test_ingest_disk_full_is_507_with_retry_after(small_disk: Tmpfs, where: str,
                                                        model: bytes) -> None:
    settings = settings_for(small_disk.path)
    async with running_api(settings) as (app, client):
        resp = await client.post("/v1/compile", files={"model": ("m.tgz", model)})
        assert resp.headers.get("retry-after") == "60", resp.headers
        detail = await _refused_then_next_accepted(app, client, settings, resp, 507,
                                                   "insufficient_storage")
    assert "disk is full" in detail and "nothing of it was kept" in detail
    print(f"\ndisk full while {where}: 507, Retry-After 60; next upload 202")


# --- a body that stops arriving, against a real server -------------------------------------------

IDLE_SECONDS = 4


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """``kiln-service serve`` on the embedded defaults, cutting uploads idle for 4 s."""
    port, data = free_port(), tmp_path / "data"
    env = base_env(KILN_DATA_DIR=str(data), KILN_UPLOAD_IDLE_TIMEOUT_SECONDS=str(IDLE_SECONDS))
    api = start("api", [str(BIN / "kiln-service"), "serve", "--port", str(port)], env, tmp_path)
    try:
        wait_ready(f"http://127.0.0.1:{port}", [api])
        yield port, data
    finally:
        api.stop()


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (fails if it never does)."""
    sock.settimeout(120)
    got = b""
    while chunk := sock.recv(65536):
        got += chunk
    return got


def test_ingest_stalled_body_is_cut_off_and_its_spool_removed(served: tuple[int, Path]) -> None:
    port, data = served
    staging = data / "staging"
    boundary = "kilnstall"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"; "
            "filename=\"m.tar.gz\"\r\n\r\n").encode()
    sent = head + os.urandom(3 << 20)  # 3 MiB arrive (spooled), 5 more are announced, never sent
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(f"POST /v1/compile HTTP/1.1\r\nHost: kiln\r\nContent-Length: {len(sent) + (5 << 20)}"
                     f"\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n\r\n".encode() + sent)
        spooled = wait_for(lambda: [p for p in staging.rglob("*-model") if p.stat().st_size],
                           "the upload to be spooled", timeout=60, every=0.05)
        answer = _read_until_closed(sock)
    status, _, rest = answer.partition(b"\r\n")
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 408"), answer[:500]
    assert b"connection: close" in headers.lower()
    problem = json.loads(body)
    assert problem["code"] == "upload_stalled", problem
    assert "KILN_UPLOAD_IDLE_TIMEOUT_SECONDS" in problem["detail"]
    assert [p for p in staging.rglob("*") if p.is_file()] == [], "the partial spool was kept"
    assert not spooled[0].exists()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
        nxt = http.post("/v1/compile", files=_good_files())
        assert nxt.status_code == 202, nxt.text
        assert [j["id"] for j in http.get("/v1/jobs").json()["items"]] == [nxt.json()["id"]]
