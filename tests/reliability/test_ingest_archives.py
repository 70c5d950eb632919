"""Promise 5, safe ingest: hostile model archives, .npz files and flags are refused with a clear
422 (or 413), before anything is extracted or stored; client file names never become paths."""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from ingest_support import (
    assert_problem,
    file_entry,
    model_tar,
    npy_with_header,
    npz_of,
    patch_central_directory,
    running_api,
    settings_for,
    special_entry,
    stored_files,
    tar_bytes,
    zip_bytes,
)

from kiln_service import ingest
from kiln_service._savedmodel_proto import Signature, TensorSpec
from kiln_service.config import Settings
from kiln_service.errors import UploadRejectedError

GIB = 1024**3
Env = tuple[Settings, httpx.AsyncClient]
SIG = Signature(inputs={"x": TensorSpec(name="serving_default_x:0", dtype="float32", shape=(None, 3))})


def _inspect(tmp_path: Path, data: bytes, **caps: int) -> ingest.ArchiveInfo:
    path = tmp_path / "upload"
    path.write_bytes(data)
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    return ingest.inspect_archive(path, max_members=caps.get("max_members", 1000),
                                  max_total_bytes=caps.get("max_total_bytes", GIB), scratch=scratch)


def _refused(tmp_path: Path, data: bytes, code: str, words: str, **caps: int) -> str:
    with pytest.raises(UploadRejectedError) as err:
        _inspect(tmp_path, data, **caps)
    assert err.value.code == code, err.value.detail
    assert words in (err.value.detail or ""), err.value.detail
    return err.value.detail or ""


def _huge(name: str, size: int) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.size = size  # declared only: the refusal must come from the header, before any data
    return info, None


TAR_CASES: dict[str, tuple[list[Any], str, str]] = {
    "dotdot": ([file_entry("model/../../etc/cron.d/x")], "unsafe_archive", "'..'"),
    "absolute": ([file_entry("/etc/passwd")], "unsafe_archive", "absolute path"),
    "windows_absolute": ([file_entry("C:/Windows/x")], "unsafe_archive", "absolute path"),
    "symlink": ([special_entry("model/variables", tarfile.SYMTYPE, "/etc")], "unsafe_archive", "link"),
    "hardlink": ([special_entry("model/h", tarfile.LNKTYPE, "/etc/shadow")], "unsafe_archive", "link"),
    "char_device": ([special_entry("model/null", tarfile.CHRTYPE)], "unsafe_archive", "special file"),
    "block_device": ([special_entry("model/sda", tarfile.BLKTYPE)], "unsafe_archive", "special file"),
    "fifo": ([special_entry("model/pipe", tarfile.FIFOTYPE)], "unsafe_archive", "special file"),
    "duplicate_file": ([file_entry("model/a.txt"), file_entry("model/a.txt", b"evil")],
                       "unsafe_archive", "appears twice"),
    "duplicate_pb": ([file_entry("model/saved_model.pb", b"\x12\x00")], "unsafe_archive", "appears twice"),
    "file_then_folder": ([file_entry("model/v"), file_entry("model/v/x")], "unsafe_archive", "appears twice"),
    "folder_then_file": ([file_entry("model/v/x"), file_entry("model/v")], "unsafe_archive", "appears twice"),
    "long_name": ([file_entry("model/" + "a" * 1100)], "unsafe_archive", "longer than"),
    "deep_path": ([file_entry("model/" + "d/" * 40 + "x")], "unsafe_archive", "folders deep"),
    "declared_huge": ([_huge("model/variables/variables.data-00000-of-00001", 5 * GIB)],
                      "archive_too_large", "declared sizes"),
}


@pytest.mark.parametrize("case", sorted(TAR_CASES))
def test_ingest_hostile_tar_is_refused(case: str, tmp_path: Path) -> None:
    members, code, words = TAR_CASES[case]
    _refused(tmp_path, model_tar(*members), code, words, max_total_bytes=GIB)


def test_ingest_declared_size_refused_before_reading_data(tmp_path: Path) -> None:
    # The header promises 5 GiB but no data follows: refused from the header alone (a reader that
    # went on to the data would report a truncated archive instead).
    data = tar_bytes([_huge("model/big.bin", 5 * GIB)], gz=False)
    _refused(tmp_path, data, "archive_too_large", "declared sizes", max_total_bytes=GIB)


def test_ingest_entry_count_capped_while_listing(tmp_path: Path) -> None:
    members = [file_entry(f"model/f{i}") for i in range(50)]
    _refused(tmp_path, model_tar(*members), "archive_too_large", "more than 20 entries", max_members=20)
    assert _inspect(tmp_path, model_tar(*members), max_members=51).members == 51


def test_ingest_repeated_folder_entries_are_harmless(tmp_path: Path) -> None:
    folder = tarfile.TarInfo("model/variables")
    folder.type = tarfile.DIRTYPE
    info = _inspect(tmp_path, model_tar((folder, None), (folder, None), file_entry("model/variables/v")))
    assert (info.root, info.members) == ("model", 4)


def test_ingest_not_an_archive_and_truncated(tmp_path: Path) -> None:
    _refused(tmp_path, b"#!/bin/sh\nrm -rf /\n" * 20, "invalid_archive", "not a tar")
    good = model_tar(file_entry("model/variables/v", b"y" * 4096))
    _refused(tmp_path, good[: len(good) // 2], "invalid_archive", "damaged or truncated")


def test_ingest_zip_symlink_and_special_file(tmp_path: Path) -> None:
    link = zipfile.ZipInfo("model/link")
    link.external_attr = (0o120777 << 16)
    _refused(tmp_path, zip_bytes([("model/saved_model.pb", b"\x12\x00"), (link, b"/etc/passwd")]),
             "unsafe_archive", "link")
    fifo = zipfile.ZipInfo("model/fifo")
    fifo.external_attr = (0o010644 << 16)
    _refused(tmp_path, zip_bytes([("model/saved_model.pb", b"\x12\x00"), (fifo, b"")]),
             "unsafe_archive", "special file")


def test_ingest_zip_encrypted_member_refused(tmp_path: Path) -> None:
    data = zip_bytes([("model/saved_model.pb", b"\x12\x00"), ("model/secret", b"s" * 100)])
    data = patch_central_directory(data, b"model/secret", flag_bits=0x1)
    _refused(tmp_path, data, "unsafe_archive", "encrypted")


def test_ingest_zip_bomb_ratio_refused(tmp_path: Path) -> None:
    # 64 KiB of zeros deflates to ~100 bytes; the central directory then claims 3.9 GB unpacked.
    data = zip_bytes([("model/saved_model.pb", b"\x12\x00"), ("model/zeros", bytes(65536))])
    data = patch_central_directory(data, b"model/zeros", file_size=0xF0000000)
    _refused(tmp_path, data, "unsafe_archive", "zip bombs", max_total_bytes=16 * GIB)


def test_ingest_zip_dotdot_and_duplicate(tmp_path: Path) -> None:
    _refused(tmp_path, zip_bytes([("model/saved_model.pb", b"\x12\x00"), ("../evil", b"x")]),
             "unsafe_archive", "'..'")
    with pytest.warns(UserWarning, match="Duplicate name"):
        data = zip_bytes([("model/saved_model.pb", b"\x12\x00"), ("model/a", b"1"), ("model/a", b"2")])
    _refused(tmp_path, data, "unsafe_archive", "appears twice")


def _npz_zip(members: list[tuple[str, bytes]]) -> bytes:
    return zip_bytes([(name, data) for name, data in members])


def _check_npz(tmp_path: Path, data: bytes, max_array_bytes: int = 1024 * 1024) -> dict[str, list[int]]:
    path = tmp_path / "inputs.npz"
    path.write_bytes(data)
    return ingest.check_example_inputs(path, SIG, max_array_bytes=max_array_bytes)


NPZ_CASES: dict[str, tuple[bytes, str, str]] = {
    "object_array": (npz_of(x=np.array([{"a": 1}, None], dtype=object)), "pickled_example_inputs", "pickle"),
    "huge_shape_from_header": (
        _npz_zip([("x.npy", npy_with_header({"descr": "<f4", "fortran_order": False,
                                             "shape": (1 << 20, 1 << 20)}))]),
        "invalid_example_inputs", "declares"),
    "int64_wraparound_shape": (
        _npz_zip([("x.npy", npy_with_header({"descr": "<f4", "fortran_order": False,
                                             "shape": (1 << 32, 1 << 32, 1 << 32)}))]),
        "invalid_example_inputs", "declares"),
    "negative_dim": (
        _npz_zip([("x.npy", npy_with_header({"descr": "<f4", "fortran_order": False, "shape": (-4, 3)}))]),
        "invalid_example_inputs", "negative"),
    "header_bigger_than_data": (
        _npz_zip([("x.npy", npy_with_header({"descr": "<f4", "fortran_order": False, "shape": (1000, 3)},
                                            b"\x00" * 16))]),
        "invalid_example_inputs", "the file holds"),
    "not_npy_member": (_npz_zip([("run.sh", b"#!/bin/sh")]),
                       "invalid_example_inputs", "not an array"),
    "path_member": (_npz_zip([("../x.npy", b"")]), "invalid_example_inputs", "not an array"),
    "not_a_zip": (b"\x93NUMPY junk", "invalid_example_inputs", "not a valid .npz"),
    "bad_header_syntax": (_npz_zip([("x.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': __import__('os')}\n")]),
                          "invalid_example_inputs", "not a valid .npz"),
}


@pytest.mark.parametrize("case", sorted(NPZ_CASES))
def test_ingest_hostile_npz_is_refused(case: str, tmp_path: Path) -> None:
    data, code, words = NPZ_CASES[case]
    with pytest.raises(UploadRejectedError) as err:
        _check_npz(tmp_path, data)
    assert err.value.code == code and words in (err.value.detail or ""), err.value.detail


def test_ingest_npz_duplicate_and_encrypted_members(tmp_path: Path) -> None:
    one = npz_of(x=np.zeros((2, 3), np.float32))
    with zipfile.ZipFile(io.BytesIO(one)) as zf:
        payload = zf.read("x.npy")
    with pytest.warns(UserWarning, match="Duplicate name"):
        dup = _npz_zip([("x.npy", payload), ("x.npy", payload)])
    with pytest.raises(UploadRejectedError, match="appears twice"):
        _check_npz(tmp_path, dup)
    locked = patch_central_directory(_npz_zip([("x.npy", payload)]), b"x.npy", flag_bits=0x1)
    with pytest.raises(UploadRejectedError, match="encrypted"):
        _check_npz(tmp_path, locked)


def test_ingest_npz_total_size_capped(tmp_path: Path) -> None:
    data = npz_of(x=np.zeros((100, 3), np.float32))
    assert _check_npz(tmp_path, data, max_array_bytes=1200) == {"x": [100, 3]}
    with pytest.raises(UploadRejectedError, match="limit 1199"):
        _check_npz(tmp_path, data, max_array_bytes=1199)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    settings = settings_for(tmp_path / "kiln")
    async with running_api(settings) as (_, client):
        yield settings, client


async def test_ingest_api_refuses_and_stores_nothing(env: Env) -> None:
    ingest_settings, ingest_client = env
    for data in (model_tar(file_entry("model/../../x")),
                 model_tar(special_entry("model/l", tarfile.SYMTYPE, "/etc/passwd"))):
        resp = await ingest_client.post("/v1/compile", files={"model": ("m.tgz", data)})
        assert_problem(resp, 422, "unsafe_archive")
    assert stored_files(ingest_settings) == []


async def test_ingest_client_filename_never_used_as_path(env: Env, tmp_path: Path) -> None:
    ingest_settings, ingest_client = env
    target = tmp_path / "escaped.tgz"
    for name in (f"../../../../{target}", str(target), "..\\..\\x.tgz", "model\x00.tgz"):
        resp = await ingest_client.post("/v1/compile", files={"model": (name, b"not an archive")})
        assert_problem(resp, 422, "invalid_archive")
    assert not target.exists()
    assert stored_files(ingest_settings) == []


@pytest.mark.parametrize("flags", [
    "--workdir=/tmp/a;touch /tmp/kiln_pwned", "--workdir $(touch /tmp/kiln_pwned)",
    "--dynamic-batch-size; rm -rf /", "--verbose=`id`", "--fp32-cast=all|sh", "--O2 && curl x",
])
async def test_ingest_shell_metacharacters_in_flags_refused(
        flags: str, env: Env) -> None:
    ingest_settings, ingest_client = env
    resp = await ingest_client.post("/v1/compile", files={"model": ("m.tgz", model_tar())},
                                    data={"flags": flags})
    body = assert_problem(resp, 422, "invalid_flags")
    assert "--workdir" in body["detail"]  # the message lists the known flags
    assert not Path("/tmp/kiln_pwned").exists()
    assert stored_files(ingest_settings) == []


@pytest.mark.parametrize(("files", "data", "code"), [
    ({"model": ("m.tgz", b"\x1f\x8b" + bytes(300_000))}, {}, "upload_too_large"),
    ({"model": ("m.tgz", b"x")}, {"flags": "--O2 " * 20_000}, "field_too_large"),
])
async def test_ingest_body_caps_413_and_nothing_stored(tmp_path: Path, files: dict[str, Any],
                                                      data: dict[str, str], code: str) -> None:
    settings = settings_for(tmp_path / "kiln", max_upload_bytes=200_000, max_request_bytes=400_000)
    async with running_api(settings) as (_, client):
        resp = await client.post("/v1/compile", files=files, data=data)
        assert_problem(resp, 413, code)
    assert stored_files(settings) == []


async def test_ingest_huge_part_header_refused(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "kiln")
    boundary = "kilnboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"; filename=\""
            + "a" * 200_000 + f"\"\r\n\r\nxx\r\n--{boundary}--\r\n").encode()
    async with running_api(settings) as (_, client):
        resp = await client.post("/v1/compile", content=body,
                                 headers={"content-type": f"multipart/form-data; boundary={boundary}"})
        detail = assert_problem(resp, 400, "invalid_multipart")["detail"]
        assert "header size exceeded" in detail  # python_multipart caps each header line
    assert stored_files(settings) == []
