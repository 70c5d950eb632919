"""The compile child on 16-bit, string and CPU-kernel-less models (issue 9, points 1 and 2).

Example inputs come from ``.npz`` files as the service stores them (bfloat16 as 2-byte records,
strings as fixed-width bytes or unicode). Tolerances are the tracer's per-dtype ones
(``kiln_worker.tracer.tolerance``): 1e-3 relative for float32, 1e-2 float16, 5e-2 bfloat16.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf
from worker_helpers import run_child

from kiln_worker._inputs import JobError, prepare_inputs


@pytest.mark.parametrize("kind", ["float16", "bfloat16"])
def test_16_bit_models_compile_and_match(zoo: Path, tmp_path: Path, kind: str) -> None:
    result = run_child(tmp_path, zoo / kind / "model",
                       example_inputs=str(zoo / kind / "example_inputs.npz"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = result.report
    assert report["inputs"] == {"x": {"dtype": kind, "shape": [2, 8]}}
    check = report["numerical_check"]
    assert check["within_tolerance"] is True, check
    assert check["max_abs_output"] > 0
    (output,) = check["outputs"].values()
    assert output["dtype"] == kind
    assert report["verify"] == {"reference": "tensorflow", "reason": None}


def test_model_without_a_cpu_kernel_is_checked_against_xla(zoo: Path, tmp_path: Path) -> None:
    result = run_child(tmp_path, zoo / "nchw_float16" / "model",
                       example_inputs=str(zoo / "nchw_float16" / "example_inputs.npz"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = result.report
    assert report["verify"]["reference"] == "xla"
    assert "NHWC" in report["verify"]["reason"]
    assert report["numerical_check"]["within_tolerance"] is True
    assert report["numerical_check"]["max_abs_output"] > 0
    tracer = report["tracer"]
    assert tracer["verify"]["reference"] == "xla"
    assert [s["status"] for s in tracer["subgraphs"]] == ["compiled"]


def _npz(tmp_path: Path, **arrays: np.ndarray) -> str:
    path = tmp_path / "inputs.npz"
    np.savez(path, **arrays)
    return str(path)


def test_npz_strings_and_bfloat16_become_the_signature_dtypes(tmp_path: Path) -> None:
    specs = {"b": tf.TensorSpec([None, 2], tf.bfloat16), "s": tf.TensorSpec([None], tf.string),
             "u": tf.TensorSpec([None], tf.string), "h": tf.TensorSpec([None, 2], tf.float16)}
    bf16 = np.array([[1.5, -2.0]], ml_dtypes.bfloat16)
    path = _npz(tmp_path, b=bf16, s=np.array([b"kiln"]), u=np.array(["glaze"]),
                h=np.array([[0.5, 0.25]], np.float16))
    inputs = prepare_inputs(specs, path, None, seed=0)
    assert {n: t.dtype for n, t in inputs.items()} == {
        "b": tf.bfloat16, "s": tf.string, "u": tf.string, "h": tf.float16}
    np.testing.assert_array_equal(inputs["b"].numpy().astype(np.float32), [[1.5, -2.0]])
    assert inputs["s"].numpy().tolist() == [b"kiln"] and inputs["u"].numpy().tolist() == [b"glaze"]


def test_npz_of_another_dtype_is_refused_with_the_fix(tmp_path: Path) -> None:
    specs = {"h": tf.TensorSpec([None, 2], tf.float16)}
    with pytest.raises(JobError, match=r"dtype float32, the signature wants float16.*astype"):
        prepare_inputs(specs, _npz(tmp_path, h=np.zeros((1, 2), np.float32)), None, seed=0)
    with pytest.raises(JobError, match="the signature wants string"):
        prepare_inputs({"s": tf.TensorSpec([None], tf.string)},
                       _npz(tmp_path, s=np.zeros(2, np.int32)), None, seed=0)
