"""Compile cache keys: the same content however packed hits; any change that matters misses."""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
from service_helpers import make_tar, make_zip

from kiln_client.digest import model_digest as client_model_digest
from kiln_client.manifest import content_digest
from kiln_client.models import CompileRequest
from kiln_service._cache_key import entry_key, inputs_digest, request_key
from kiln_service.ingest import inspect_archive

TOOLCHAIN = {"kiln-worker": "0.1.0", "tensorflow": "2.21.0", "tf-keras": "2.21.0",
             "default-placement": "measured", "backend": "xla"}


def _model_key(archive: Path) -> str:
    with tempfile.TemporaryDirectory() as scratch:
        return inspect_archive(archive, max_members=1000, max_total_bytes=1 << 30,
                               scratch=Path(scratch)).digest


def _shuffled_tar(src: Path, dest: Path) -> Path:
    """``src`` as a plain tar, members in reverse order with other mtimes, owners and modes."""
    with tarfile.open(dest, "w") as tar:
        for path in sorted(src.rglob("*"), reverse=True):
            if not path.is_file():
                continue
            info = tar.gettarinfo(path, arcname=f"renamed/{path.relative_to(src).as_posix()}")
            info.mtime, info.uid, info.gid, info.uname, info.mode = 12345, 7, 7, "someone", 0o600
            with open(path, "rb") as handle:
                tar.addfile(info, handle)
    return dest


def _npz(path: Path, compressed: bool = False, **arrays: np.ndarray) -> Path:
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def test_rearchived_model_has_the_same_key(models_dir: Path, tmp_path: Path) -> None:
    src = models_dir / "two_inputs"
    digests = {
        "tar.gz, one folder down": _model_key(make_tar(src, tmp_path / "a.tar.gz")),
        "tar, reversed order, other mtimes/owners/folder": _model_key(
            _shuffled_tar(src, tmp_path / "b.tar")),
        "zip at the root": _model_key(make_zip(src, tmp_path / "c.zip")),
    }
    assert len(set(digests.values())) == 1, digests
    # the same digest the manifest records for a folder (one definition of "content")
    assert set(digests.values()) == {content_digest(src)}


def test_the_client_digests_a_model_as_the_service_does(models_dir: Path, tmp_path: Path) -> None:
    # The SDK asks the cache with model_digest(...) of what the user has on disk (a folder or an
    # archive); the service keys an upload by the digest its ingest pass computes: they must agree.
    src = shutil.copytree(models_dir / "two_inputs", tmp_path / "folder")
    (src / "assets.extra").mkdir()
    (src / "assets.extra" / "kiln-manifest.json").write_text("{}")  # counts for the cache
    archives = [make_tar(src, tmp_path / "a.tar.gz"), make_zip(src, tmp_path / "b.zip"),
                make_zip(src, tmp_path / "c.zip", folder="exported")]
    client_side = {client_model_digest(src)} | {client_model_digest(a) for a in archives}
    service_side = {_model_key(a) for a in archives}
    assert len(client_side) == 1 and client_side == service_side
    assert content_digest(src) != client_model_digest(src), "the manifest's digest leaves it out"
    weights = next((src / "variables").glob("variables.data-*"))
    weights.write_bytes(weights.read_bytes() + b"\0")
    assert client_model_digest(src) not in service_side


def test_changed_weights_miss(models_dir: Path, tmp_path: Path) -> None:
    src = models_dir / "two_inputs"
    changed = shutil.copytree(src, tmp_path / "changed")
    weights = next((changed / "variables").glob("variables.data-*"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    before = _model_key(make_tar(src, tmp_path / "a.tar.gz"))
    after = _model_key(make_tar(changed, tmp_path / "b.tar.gz"))
    assert before != after
    req = CompileRequest()
    assert request_key(req, model=before, inputs=None) != request_key(req, model=after, inputs=None)


def test_changed_inputs_miss(tmp_path: Path) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    same = {inputs_digest(_npz(tmp_path / "a.npz", x=x)),
            inputs_digest(_npz(tmp_path / "b.npz", compressed=True, x=x.copy()))}
    assert len(same) == 1, "the .npz container (compression, timestamps) must not matter"
    other_values = inputs_digest(_npz(tmp_path / "c.npz", x=x + 1))
    other_dtype = inputs_digest(_npz(tmp_path / "d.npz", x=x.astype(np.float64)))
    other_name = inputs_digest(_npz(tmp_path / "e.npz", y=x))
    assert len(same | {other_values, other_dtype, other_name}) == 4
    req = CompileRequest()
    keys = {request_key(req, model="m", inputs=d) for d in same | {other_values}}
    keys |= {request_key(CompileRequest(input_shapes={"x": [2, 3]}), model="m", inputs=None),
             request_key(CompileRequest(input_shapes={"x": [4, 3]}), model="m", inputs=None)}
    assert len(keys) == 4


@pytest.mark.parametrize("change", [
    {"flags": "--dynamic-batch-size"}, {"target": "inf1"}, {"signature": "other"},
    {"placement": "all"}, {"placement": {"mode": "measured", "exclude_ops": ["MatMul"]}},
])
def test_changed_flags_or_request_fields_miss(change: dict[str, object]) -> None:
    base = request_key(CompileRequest(), model="m", inputs="i")
    assert request_key(CompileRequest.model_validate(change), model="m", inputs="i") != base


def test_flags_are_keyed_in_canonical_form() -> None:
    one = CompileRequest(flags="--workdir w --dynamic-batch-size")
    two = CompileRequest(flags="--dynamic-batch-size  --workdir=w")
    assert request_key(one, model="m", inputs=None) == request_key(two, model="m", inputs=None)


@pytest.mark.parametrize("part", ["kiln-worker", "tensorflow", "tf-keras", "backend",
                                  "default-placement"])
def test_changed_toolchain_misses(part: str) -> None:
    request = request_key(CompileRequest(), model="m", inputs=None)
    assert entry_key(request, TOOLCHAIN) == entry_key(request, dict(reversed(TOOLCHAIN.items())))
    assert entry_key(request, {**TOOLCHAIN, part: "other"}) != entry_key(request, TOOLCHAIN)
