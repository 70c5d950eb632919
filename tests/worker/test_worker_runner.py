"""The compile child (``python -m kiln_worker.runner``) on real tiny SavedModels, as a subprocess."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
from worker_helpers import run_child


def test_compiles_verifies_and_reports_in_stage_order(zoo: Path, tmp_path: Path) -> None:
    result = run_child(tmp_path, zoo / "mlp" / "model",
                       example_inputs=str(zoo / "mlp" / "example_inputs.npz"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.error is None
    stages = result.stages
    assert stages[0] == "loading" and stages[-1] == "storing"
    order = ["loading", "tracing", "compiling", "verifying", "storing"]
    assert [s for s in order if s in stages] == [s for s in stages if s in order]
    assert "tracing" in stages and "verifying" in stages
    progress = [e["progress"] for e in result.events if e["event"] == "progress"]
    assert progress == sorted(progress)  # never goes backwards
    report = result.report
    check = report["numerical_check"]
    assert check["within_tolerance"] is True
    assert check["max_abs_output"] > 0  # the comparison really saw outputs
    assert check["max_abs_diff"] <= 1e-4 * max(1.0, check["max_abs_output"])
    assert len(check["outputs"]) == 1  # the MLP has one output
    assert report["tracer"]["backend"] == "xla"
    assert report["inputs"] == {"x": {"dtype": "float32", "shape": [3, 8]}}
    assert report["inputs_generated"] is False
    assert {"load_seconds", "trace_seconds", "verify_seconds", "total_seconds"} <= set(
        report["timings"])
    assert report["versions"]["tensorflow"]
    with tarfile.open(result.out_dir / "compiled_model.tar.gz") as tar:
        assert "compiled_model/saved_model.pb" in tar.getnames()
    assert result.stray_stdout == []  # stdout carried protocol lines only


def test_generates_inputs_from_the_signature(zoo: Path, tmp_path: Path) -> None:
    result = run_child(tmp_path, zoo / "two_inputs" / "model")
    assert result.returncode == 0, result.stderr[-3000:]
    report = result.report
    assert report["inputs_generated"] is True
    # The unknown batch dimension counts as 1; the int input is generated as int32.
    assert report["inputs"] == {"a": {"dtype": "float32", "shape": [1, 4]},
                                "b": {"dtype": "int32", "shape": [1, 4]}}
    assert report["numerical_check"]["within_tolerance"] is True


def test_unknown_inner_dimension_needs_input_shapes(zoo: Path, tmp_path: Path) -> None:
    result = run_child(tmp_path / "a", zoo / "dynamic" / "model")
    assert result.returncode == 3
    assert result.error is not None
    assert result.error["kind"] == "client_error" and result.error["code"] == "InvalidInputs"
    assert "input_shapes" in result.error["message"]
    fixed = run_child(tmp_path / "b", zoo / "dynamic" / "model", input_shapes={"x": [2, 5, 3]})
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert fixed.report["inputs"]["x"]["shape"] == [2, 5, 3]


@pytest.mark.parametrize("mode", ["all", "measured"])
def test_placement_mode_reaches_the_tracer(zoo: Path, tmp_path: Path, mode: str) -> None:
    result = run_child(tmp_path, zoo / "mixed" / "model", placement={"mode": mode})
    assert result.returncode == 0, result.stderr[-3000:]
    tracer = result.report["tracer"]
    assert tracer["placement"]["mode"] == mode
    measured = [s for s in tracer["subgraphs"] if "measurement" in s]
    assert bool(measured) == (mode == "measured")
    assert not any(op["reason"].startswith("excluded by") for op in tracer["cpu_ops"])


def test_placement_spec_limits_the_accelerator_ops(zoo: Path, tmp_path: Path) -> None:
    result = run_child(tmp_path, zoo / "mixed" / "model", placement={"include_ops": ["MatMul"]})
    assert result.returncode == 0, result.stderr[-3000:]
    tracer = result.report["tracer"]
    compiled = [s for s in tracer["subgraphs"] if s["status"] == "compiled"]
    assert compiled, tracer["subgraphs"]
    op_types = set().union(*(s["op_types"] for s in tracer["subgraphs"]))
    assert op_types == {"MatMul"}
    cpu_op_types = {op["op"] for op in tracer["cpu_ops"]}
    assert {"Relu", "Tanh"} <= cpu_op_types
    assert result.report["numerical_check"]["within_tolerance"] is True


def test_rejected_model_is_a_client_error(zoo: Path, tmp_path: Path) -> None:
    result = run_child(tmp_path, zoo / "table_writer" / "model")
    assert result.returncode == 3, result.stderr[-3000:]
    assert result.error is not None
    assert result.error["kind"] == "client_error"
    assert result.error["code"] == "UnsupportedModel"
    assert not (result.out_dir / "compiled_model.tar.gz").exists()


def test_unknown_signature_lists_the_known_ones(zoo: Path, tmp_path: Path) -> None:
    result = run_child(tmp_path, zoo / "mlp" / "model", signature="predict")
    assert result.returncode == 3
    assert result.error is not None and result.error["code"] == "UnknownSignature"
    assert "serving_default" in result.error["message"]


def test_not_a_saved_model(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "saved_model.pb").write_bytes(b"this is not a protobuf")
    result = run_child(tmp_path / "run", tmp_path / "model")
    assert result.returncode == 3
    assert result.error is not None
    assert (result.error["kind"], result.error["code"]) == ("client_error", "InvalidModel")


def test_example_inputs_of_the_wrong_dtype(zoo: Path, tmp_path: Path) -> None:
    np.savez(tmp_path / "bad.npz", x=np.ones((2, 8), np.int64))
    result = run_child(tmp_path / "run", zoo / "mlp" / "model", example_inputs=str(tmp_path / "bad.npz"))
    assert result.returncode == 3
    assert result.error is not None and result.error["code"] == "InvalidInputs"
    assert "float32" in result.error["message"] and "int64" in result.error["message"]


def test_unexpected_error_exits_1_with_a_traceback(zoo: Path, tmp_path: Path) -> None:
    result = run_child(tmp_path, zoo / "mlp" / "model", target="tpu")
    assert result.returncode == 1
    assert result.error is None
    assert "Traceback" in result.stderr and "unknown target 'tpu'" in result.stderr


def test_inf1_without_the_neuron_toolchain_says_what_is_missing(zoo: Path, tmp_path: Path) -> None:
    # Real absence of AWS's tensorflow-neuron on this host (nothing faked): a worker that serves
    # inf1 without it is misconfigured, which is Kiln's side, not the user's.
    result = run_child(tmp_path, zoo / "mlp" / "model", target="inf1",
                       example_inputs=str(zoo / "mlp" / "example_inputs.npz"))
    assert result.returncode == 3, result.stderr[-3000:]
    assert result.error is not None
    assert result.error["kind"] == "system_error"
    assert result.error["code"] == "BackendUnavailable"
    assert "neuron" in result.error["message"].lower()
