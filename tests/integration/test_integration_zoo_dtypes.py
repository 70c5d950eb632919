"""16-bit models through the running service (issue 9): ``POST /v1/compile`` with the SavedModel
archive and an ``.npz`` of example inputs, compiled by a real worker, matching the original.

Tolerances are the tracer's per-dtype ones (``kiln_worker.tracer.tolerance``): relative to the
largest output magnitude, 1e-2 for float16 and 5e-2 for bfloat16.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from integration_support import Stack, check_compiled

pytestmark = pytest.mark.integration

#: float16 outputs: 11 significant bits (the worker's check uses the same bound)
RTOL_FLOAT16 = 1e-2


def test_16_bit_and_cpu_kernel_less_models_compile_through_the_service(
    prod_stack: Stack, zoo: Path, tmp_path: Path
) -> None:
    kinds = ("float16", "bfloat16", "nchw_float16")
    jobs = {kind: prod_stack.submit(zoo / kind / "model.tar.gz", zoo / kind / "example_inputs.npz",
                                    name=f"it-{kind}")
            for kind in kinds}
    reports = {}
    for kind, job in jobs.items():
        done = prod_stack.wait(job["id"], timeout=600)
        assert done["status"] == "succeeded", (kind, done["failure"])
        path = prod_stack.download(job["id"], "report.json", tmp_path / f"{kind}.json")
        reports[kind] = json.loads(path.read_text())
        check = reports[kind]["numerical_check"]
        assert check["within_tolerance"] is True, (kind, check)
        assert check["max_abs_output"] > 0
    assert reports["float16"]["inputs"] == {"x": {"dtype": "float16", "shape": [2, 8]}}
    assert reports["bfloat16"]["inputs"] == {"x": {"dtype": "bfloat16", "shape": [2, 8]}}
    assert reports["float16"]["verify"]["reference"] == "tensorflow"
    # TensorFlow cannot run float16 NCHW pooling on CPU: XLA gave the reference outputs.
    assert reports["nchw_float16"]["verify"]["reference"] == "xla"
    assert reports["nchw_float16"]["tracer"]["ops_on_accelerator"] > 0
    # The compiled float16 model, reloaded in a fresh interpreter, matches the original.
    archive = prod_stack.download(jobs["float16"]["id"], "compiled_model.tar.gz",
                                  tmp_path / "float16.tar.gz")
    compared = check_compiled(archive, zoo / "float16" / "model",
                              zoo / "float16" / "example_inputs.npz", tmp_path / "check")
    assert compared["shapes_equal"] is True
    assert compared["max_abs_diff"] <= RTOL_FLOAT16 * max(1.0, compared["max_abs_output"])
