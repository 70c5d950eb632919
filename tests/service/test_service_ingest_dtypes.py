"""Example inputs of every dtype pass the service's header-only check against the signature."""

from __future__ import annotations

import io
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from kiln_service import ingest
from kiln_service._savedmodel_proto import Signature, TensorSpec
from kiln_service.errors import UploadRejectedError

CASES = {
    "float16": np.zeros((2, 3), np.float16),
    "bfloat16": np.zeros((2, 3), ml_dtypes.bfloat16),  # written as 2-byte void records
    "float64": np.zeros((2, 3), np.float64),
    "int8": np.zeros((2, 3), np.int8),
    "uint8": np.zeros((2, 3), np.uint8),
    "int64": np.zeros((2, 3), np.int64),
    "bool": np.zeros((2, 3), bool),
    "string": np.array([[b"a", b"bc", b""]] * 2),
}


def _npz(tmp_path: Path, array: np.ndarray) -> Path:
    buffer = io.BytesIO()
    np.savez(buffer, x=array)
    path = tmp_path / "inputs.npz"
    path.write_bytes(buffer.getvalue())
    return path


def _signature(dtype: str) -> Signature:
    return Signature(inputs={"x": TensorSpec(name="serving_default_x:0", dtype=dtype,
                                             shape=(None, 3))})


@pytest.mark.parametrize("dtype", list(CASES))
def test_example_inputs_of_the_signature_dtype_are_accepted(tmp_path: Path, dtype: str) -> None:
    shapes = ingest.check_example_inputs(_npz(tmp_path, CASES[dtype]), _signature(dtype),
                                         max_array_bytes=1 << 20)
    assert shapes == {"x": [2, 3]}


@pytest.mark.parametrize(("sent", "wanted"), [("float32", "float16"), ("float16", "bfloat16"),
                                              ("int16", "bfloat16"), ("bfloat16", "float16")])
def test_example_inputs_of_another_dtype_are_refused(tmp_path: Path, sent: str, wanted: str) -> None:
    array = np.zeros((2, 3), ml_dtypes.bfloat16 if sent == "bfloat16" else sent)
    with pytest.raises(UploadRejectedError, match=f"signature expects {wanted}"):
        ingest.check_example_inputs(_npz(tmp_path, array), _signature(wanted),
                                    max_array_bytes=1 << 20)


def _npz_of(tmp_path: Path, **arrays: np.ndarray) -> Path:
    path = tmp_path / "inputs.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def test_string_lengths_are_accepted_beside_their_input_and_checked(tmp_path: Path) -> None:
    from kiln_client import example_inputs

    lengths = example_inputs.LENGTHS_PREFIX + "x"
    whole = example_inputs.encode("x", np.array([[b"a\x00", b"", b"c"]] * 2, dtype=object))
    assert set(whole) == {"x", lengths} and whole[lengths].tolist() == [[2, 0, 1]] * 2
    check = ingest.check_example_inputs
    assert check(_npz_of(tmp_path, **whole), _signature("string"),
                 max_array_bytes=1 << 20) == {"x": [2, 3]}
    for bad, message in [({lengths: np.zeros((2, 2), np.int64)}, "must be int64 of shape"),
                         ({lengths: np.zeros((2, 3), np.int32)}, "must be int64 of shape"),
                         ({example_inputs.LENGTHS_PREFIX + "y": whole[lengths]}, "not an input")]:
        with pytest.raises(UploadRejectedError, match=message):
            check(_npz_of(tmp_path, x=whole["x"], **bad), _signature("string"),
                  max_array_bytes=1 << 20)
    with pytest.raises(UploadRejectedError, match="for a bytes input"):
        check(_npz_of(tmp_path, x=np.zeros((2, 3), np.float32), **{lengths: whole[lengths]}),
              _signature("float32"), max_array_bytes=1 << 20)
