"""The tracer zoo through the running service: ``POST /v1/compile`` with the SavedModel archive.

Each model (built by ``zoo_models.py`` in a subprocess) is compiled by a real API and worker (the
embedded stack: ``kiln-service up``); the job must succeed, and the compiled SavedModel, loaded in a
fresh interpreter, must match the original on inputs of another batch size than the job's. To add
a model: a builder in ``zoo_models.BUILDERS`` and a ``ZooCase`` in ``CASES``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from integration_support import ROOT, Stack, base_env, check_compiled

pytestmark = pytest.mark.integration

ZOO_MODELS = ROOT / "tests" / "integration" / "zoo_models.py"
TABLE_REASON = "lookup table: stateful, stays on CPU"  # kiln_worker.tracer.tables.TABLE_REASON
COMPILED = ("compiled", "rejected_no_gain")  # XLA compiled it (kept, or measured no faster)


@dataclass(frozen=True)
class ZooCase:
    """A model of ``zoo_models.BUILDERS`` and what its compile report must show."""

    name: str
    rtol: float = 1e-3  #: relative to the largest output magnitude (float32)
    compiled_op: str | None = None  #: an op type some compiled subgraph holds
    table: bool = False  #: table ops are CPU ops with the table reason
    random_outputs: tuple[str, ...] = ()  #: outputs drawn at random: compared by shape


CASES = [
    ZooCase("lstm", compiled_op="While"),
    ZooCase("string_lookup", compiled_op="MatMul", table=True),
    ZooCase("text_vectorization", table=True),
    ZooCase("asset_table", compiled_op="MatMul", table=True),
    ZooCase("random_draw", random_outputs=("noise",)),
    ZooCase("sorted_segments"),  # takes any batch though rows are summed per segment
    ZooCase("keras3_export", compiled_op="While"),  # keras.Model.export, inputs keyed by name
]


@pytest.fixture(scope="module")
def zoo_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("flow-zoo")
    names = [case.name for case in CASES]
    proc = subprocess.run([sys.executable, str(ZOO_MODELS), str(out), *names], env=base_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def zoo_jobs(embedded_stack: Stack, zoo_models: Path) -> dict[str, str]:
    """Every case submitted up front (the worker compiles one while an earlier one is checked)."""
    jobs = {}
    for case in CASES:
        folder = zoo_models / case.name
        job = embedded_stack.submit(folder / "model.tar.gz", folder / "example_inputs.npz",
                                    name=f"zoo-{case.name}")
        jobs[case.name] = job["id"]
    return jobs


def _assert_report(case: ZooCase, tracer: dict[str, Any]) -> None:
    ops = {op for s in tracer["subgraphs"] if s["status"] in COMPILED for op in s["op_types"]}
    ops |= {op.removeprefix("Stateless") for op in ops}
    if case.compiled_op:
        assert case.compiled_op in ops, tracer["subgraphs"]
    if case.table:
        reasons = {c["reason"] for c in tracer["cpu_ops"] if c["op"].startswith("LookupTable")}
        assert reasons == {TABLE_REASON}, tracer["cpu_ops"]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_zoo_model_compiles_through_the_service(
    case: ZooCase, embedded_stack: Stack, zoo_models: Path, zoo_jobs: dict[str, str],
    tmp_path: Path
) -> None:
    folder, job = zoo_models / case.name, {"id": zoo_jobs[case.name]}
    done = embedded_stack.wait(job["id"], timeout=900)
    assert done["status"] == "succeeded", done["failure"]
    report_path = embedded_stack.download(job["id"], "report.json", tmp_path / "report.json")
    report = json.loads(report_path.read_text())
    assert report["numerical_check"]["within_tolerance"] is True, report["numerical_check"]
    _assert_report(case, report["tracer"])
    archive = embedded_stack.download(job["id"], "compiled_model.tar.gz", tmp_path / "c.tar.gz")
    check = check_compiled(archive, folder / "model", folder / "other_inputs.npz", tmp_path / "chk",
                           case.random_outputs)
    assert check["shapes_equal"] is True
    assert check["max_abs_diff"] <= case.rtol * max(check["max_abs_output"], 1e-6), check
