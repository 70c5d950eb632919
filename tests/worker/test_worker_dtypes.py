"""The compile child on 16-bit, string and CPU-kernel-less models (issue 9, points 1 and 2).

Example inputs come from ``.npz`` files as the service stores them (bfloat16 as 2-byte records,
strings as fixed-width bytes). Tolerances are the tracer's per-dtype ones
(``kiln_worker.tracer.tolerance``): 1e-3 relative for float32, 1e-2 float16, 5e-2 bfloat16.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from worker_helpers import run_child


@pytest.mark.parametrize(("kind", "dtypes"), [
    ("float16", {"x": "float16"}),
    ("bfloat16", {"x": "bfloat16"}),
    ("strings", {"x": "float32", "words": "string"}),
])
def test_inputs_of_any_dtype_compile_and_match(zoo: Path, tmp_path: Path, kind: str,
                                               dtypes: dict[str, str]) -> None:
    result = run_child(tmp_path, zoo / kind / "model",
                       example_inputs=str(zoo / kind / "example_inputs.npz"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = result.report
    assert {name: spec["dtype"] for name, spec in report["inputs"].items()} == dtypes
    check = report["numerical_check"]
    assert check["within_tolerance"] is True, check
    assert check["max_abs_output"] > 0
    assert report["verify"] == {"reference": "tensorflow", "reason": None}
    if kind != "strings":
        (output,) = check["outputs"].values()
        assert output["dtype"] == kind


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


def test_generated_string_inputs(zoo: Path, tmp_path: Path) -> None:
    result = run_child(tmp_path, zoo / "strings" / "model")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.report["inputs"]["words"] == {"dtype": "string", "shape": [1]}
    assert result.report["numerical_check"]["within_tolerance"] is True
