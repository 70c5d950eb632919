"""Packing models and example inputs without TensorFlow."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

import kiln_client
from kiln_client._upload import prepare_upload, signature_input_names


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _saved_model_pb(signatures: dict[str, list[str]]) -> bytes:
    """A minimal SavedModel proto: schema version, one MetaGraphDef with signature_def entries."""
    meta = b""
    for key, inputs in signatures.items():
        sig = b"".join(
            _field(1, _field(1, name.encode()) + _field(2, _field(1, f"{key}_{name}:0".encode())))
            for name in inputs
        ) + _field(3, b"tensorflow/serving/predict")
        meta += _field(5, _field(1, key.encode()) + _field(2, sig))
    return _varint(1 << 3 | 0) + _varint(1) + _field(2, _field(1, b"\x0a\x05serve") + meta)


@pytest.fixture
def saved_model(tmp_path: Path) -> Path:
    root = tmp_path / "sm"
    (root / "variables").mkdir(parents=True)
    (root / "saved_model.pb").write_bytes(
        _saved_model_pb({"serving_default": ["zeta", "alpha"], "other": ["x"]})
    )
    (root / "variables" / "variables.index").write_bytes(b"index")
    return root


def test_signature_names_from_dir_and_archives(saved_model: Path, tmp_path: Path) -> None:
    assert signature_input_names(saved_model, "serving_default") == ["alpha", "zeta"]
    assert signature_input_names(saved_model, "other") == ["x"]
    tgz = tmp_path / "m.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(saved_model, arcname="export")
    assert signature_input_names(tgz, "other") == ["x"]
    zpath = tmp_path / "m.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.write(saved_model / "saved_model.pb", "saved_model.pb")
    assert signature_input_names(zpath, "serving_default") == ["alpha", "zeta"]
    with pytest.raises(kiln_client.InputError, match=r"no signature 'nope'.*other, serving_default"):
        signature_input_names(saved_model, "nope")


def test_directory_is_packed_and_positional_inputs_keyed(saved_model: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    a, z = np.ones((1, 2), "float32"), np.zeros((1, 3), "float32")
    up = prepare_upload(saved_model, [a, z], signature="serving_default", workdir=work)
    with tarfile.open(up.model) as tar:
        names = set(tar.getnames())
    assert {"model/saved_model.pb", "model/variables/variables.index"} <= names
    assert up.example_inputs is not None
    with np.load(up.example_inputs, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["alpha", "zeta"]
        np.testing.assert_array_equal(npz["alpha"], a)


def test_dict_inputs_keep_their_keys_and_archives_pass_through(tmp_path: Path) -> None:
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(b"anything")
    up = prepare_upload(archive, {"x": [[1.0, 2.0]]}, signature="serving_default", workdir=tmp_path)
    assert up.model == archive
    with np.load(up.example_inputs, allow_pickle=False) as npz:  # type: ignore[arg-type]
        assert npz.files == ["x"] and npz["x"].shape == (1, 2)


def test_npz_path_is_passed_through(tmp_path: Path) -> None:
    archive = tmp_path / "model.zip"
    archive.write_bytes(b"z")
    npz = tmp_path / "in.npz"
    np.savez(npz, x=np.zeros(3))
    assert prepare_upload(archive, str(npz), signature="s", workdir=tmp_path).example_inputs == npz


@pytest.mark.parametrize(
    ("model", "inputs", "message"),
    [
        ("missing", None, "does not exist"),
        ("file.txt", None, "not a SavedModel directory or archive"),
        ("model.keras", None, "Keras model file: .*model.export"),
        ("emptydir", None, "has no saved_model.pb"),
        (object(), None, "cannot compile a object"),
        ("sm", [np.zeros(1)], "got 1 positional example input.*takes 2: alpha, zeta"),
        ("sm", {"x": np.array([object(), 1], dtype=object)}, "holds a object.*one dtype"),
    ],
)
def test_unusable_model_or_inputs_say_what_to_do(
    model: object, inputs: object, message: str, saved_model: Path, tmp_path: Path
) -> None:
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "model.keras").write_bytes(b"PK")
    (tmp_path / "emptydir").mkdir()
    target = tmp_path / model if isinstance(model, str) else model
    work = tmp_path / "w"
    work.mkdir()
    with pytest.raises(kiln_client.InputError, match=message):
        prepare_upload(target, inputs, signature="serving_default", workdir=work)


def test_python_strings_keep_their_trailing_nul_bytes(saved_model: Path, tmp_path: Path) -> None:
    from kiln_client import example_inputs

    records = [[b"ab\x00", b""], [b"\x00", b"c"]]
    up = prepare_upload(saved_model, {"alpha": records, "zeta": ["é\x00", "x"]},
                        signature="serving_default", workdir=tmp_path)
    with np.load(up.example_inputs, allow_pickle=False) as npz:  # type: ignore[arg-type]
        arrays = dict(npz)
    inputs, lengths = example_inputs.split(arrays)
    assert set(inputs) == {"alpha", "zeta"}
    assert example_inputs.decode("alpha", inputs["alpha"], lengths["alpha"]).tolist() == records
    assert example_inputs.decode("zeta", inputs["zeta"], lengths["zeta"]).tolist() == [
        "é\x00".encode(), b"x"]
    numbers = prepare_upload(saved_model, {"alpha": [1.5, 2.0], "zeta": np.array([b"a\x00"])},
                             signature="serving_default", workdir=tmp_path)
    with np.load(numbers.example_inputs, allow_pickle=False) as npz:  # type: ignore[arg-type]
        assert sorted(npz.files) == ["alpha", "zeta"]  # no lengths: nothing to restore
