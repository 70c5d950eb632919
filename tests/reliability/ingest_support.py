"""Helpers of the ingest and fuzz tests: hostile archives and ``.npz`` files built byte by byte,
real SavedModels built by TensorFlow in a subprocess, and an in-process API with auth off.

(A uniquely named module, not a ``conftest``: the reliability folder is shared with other suites.)
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from kiln_service import migrations
from kiln_service.config import Settings
from kiln_service.main import create_app

HERE = Path(__file__).resolve().parent
SAVED_MODEL_PB = b"\x12\x00"  # a SavedModel with one empty meta graph: enough to be located


def settings_for(data_dir: Path, **overrides: Any) -> Settings:
    """Embedded settings under ``data_dir`` with auth explicitly off (these tests are not about it)."""
    extra: dict[str, Any] = {"auth": "off"} if "auth" in Settings.model_fields else {}
    return Settings(data_dir=data_dir, **{**extra, **overrides})


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]], *, gz: bool = True) -> bytes:
    """Return a tar(.gz) holding exactly ``members`` (header, data), whatever their names or types."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def file_entry(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def special_entry(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


def model_tar(*extra: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    """A minimal SavedModel folder plus ``extra`` members."""
    return tar_bytes([file_entry("model/saved_model.pb", SAVED_MODEL_PB), *extra])


def zip_bytes(members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for info, data in members:
            zf.writestr(info, data)
    return buf.getvalue()


def patch_central_directory(data: bytes, name: bytes, *, flag_bits: int | None = None,
                            file_size: int | None = None) -> bytes:
    """Rewrite fields of ``name``'s central-directory record (what ``zipfile`` and Kiln read)."""
    buf = bytearray(data)
    at = buf.find(b"PK\x01\x02")
    while at != -1:
        name_len = int.from_bytes(buf[at + 28:at + 30], "little")
        if bytes(buf[at + 46:at + 46 + name_len]) == name:
            if flag_bits is not None:
                buf[at + 8:at + 10] = flag_bits.to_bytes(2, "little")
            if file_size is not None:
                buf[at + 24:at + 28] = file_size.to_bytes(4, "little")
            return bytes(buf)
        at = buf.find(b"PK\x01\x02", at + 4)
    raise AssertionError(f"{name!r} not in the zip's central directory")


def pb_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


def pb_field(number: int, payload: bytes | str) -> bytes:
    """A length-delimited protobuf field."""
    data = payload.encode() if isinstance(payload, str) else payload
    return pb_varint(number << 3 | 2) + pb_varint(len(data)) + data


def pb_node(name: str, op: str, *inputs: str, attrs: dict[str, bytes] | None = None) -> bytes:
    """A ``NodeDef``; ``attrs`` maps names to serialized ``AttrValue`` messages."""
    body = pb_field(1, name) + pb_field(2, op) + b"".join(pb_field(3, i) for i in inputs)
    for key, value in (attrs or {}).items():
        body += pb_field(5, pb_field(1, key) + pb_field(2, value))
    return body


def pb_func_attr(name: str) -> bytes:
    """An ``AttrValue`` holding a function (``NameAttrList``)."""
    return pb_field(10, pb_field(1, name))


def saved_model_pb(nodes: list[bytes], functions: dict[str, list[bytes]], output: str) -> bytes:
    """A ``saved_model.pb``: one ``serve`` meta graph, its graph, and a ``serving_default``
    signature with one float input ``x`` [-1, 3] and one output tensor ``output``."""
    library = b"".join(pb_field(1, pb_field(1, pb_field(1, fname)) + b"".join(pb_field(3, n) for n in body))
                       for fname, body in functions.items())
    graph = b"".join(pb_field(1, n) for n in nodes) + (pb_field(2, library) if library else b"")
    dims = pb_field(2, b"\x08" + pb_varint((1 << 64) - 1)) + pb_field(2, b"\x08\x03")
    x = pb_field(1, "serving_default_x:0") + b"\x10\x01" + pb_field(3, dims)
    y = pb_field(1, output) + b"\x10\x01"
    sig = (pb_field(1, pb_field(1, "x") + pb_field(2, x)) + pb_field(2, pb_field(1, "y") + pb_field(2, y))
           + pb_field(3, "tensorflow/serving/predict"))
    meta = pb_field(1, pb_field(4, "serve")) + pb_field(2, graph) + pb_field(
        5, pb_field(1, "serving_default") + pb_field(2, sig))
    return pb_field(2, meta)


def npz_of(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def npy_with_header(header: dict[str, Any], data: bytes = b"") -> bytes:
    """A ``.npy`` file with any header dict (version 1.0), e.g. a shape far larger than ``data``."""
    text = repr(header).encode("latin1")
    pad = 64 - (10 + len(text) + 1) % 64
    body = text + b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body + data


def build_risky_models(out: Path) -> Path:
    """Run ``_build_risky_models.py`` (real TensorFlow) into ``out``; return ``out``."""
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, str(HERE / "_build_risky_models.py"), str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def tar_folder(src: Path, *, folder: str = "model") -> bytes:
    """The SavedModel folder ``src`` as .tar.gz bytes, one folder down."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(src.rglob("*")):
            tar.add(path, arcname=f"{folder}/{path.relative_to(src).as_posix()}", recursive=False)
    return buf.getvalue()


@contextlib.asynccontextmanager
async def running_api(settings: Settings) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """The real app on migrated ``settings``, and an in-process HTTP client for it."""
    if settings.resolved_database_url.startswith("sqlite"):
        migrations.upgrade(settings.resolved_database_url)
    application = create_app(settings)
    try:
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://kiln.test") as client:
            yield application, client
    finally:
        application.state.services.job_store.dispose()


def stored_files(settings: Settings) -> list[Path]:
    """Every file under the artifact store and staging (should be none after a refusal)."""
    roots = [settings.data_dir / "artifacts", settings.staging_dir]
    return [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]


def assert_problem(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json", resp.headers
    body: dict[str, Any] = resp.json()
    assert body["status"] == status and body["code"] == code, body
    assert body["detail"]
    return body
