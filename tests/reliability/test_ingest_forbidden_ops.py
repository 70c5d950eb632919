"""Promise 4's first check: a serving signature that reaches file, network or Python ops is refused
up front (422 ``forbidden_ops``), naming the ops and where they are; a normal model is accepted.

The SavedModels are real: TensorFlow builds them once, in a subprocess (see
``_build_risky_models.py``); the API under test never imports TensorFlow.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from ingest_support import (
    assert_problem,
    build_risky_models,
    running_api,
    settings_for,
    stored_files,
    tar_folder,
)

from kiln_client._savedmodel import fields, message
from kiln_service._graph_scan import FORBIDDEN_OPS, index_graph
from kiln_service.config import Settings

Env = tuple[Settings, httpx.AsyncClient]

REFUSED = {
    # model → (op named in the answer, a piece of the node path, the file it would touch)
    "write_file": ("WriteFile", "__inference_serve", "/tmp/kiln_should_never_exist.txt"),
    "read_file": ("ReadFile", "__inference_serve", None),
    "print_to_file": ("PrintV2", "__inference_serve", "/tmp/kiln_print.txt"),
    "dataset_reader": ("TFRecordDataset", "/TFRecordDataset", None),
    "nested_write": ("WriteFile", "cond_true", "/tmp/kiln_nested.txt"),
    "init_write": ("WriteFile", "(runs when the model is loaded)", "/tmp/kiln_written_on_load.txt"),
    "dataset_from_string": ("DatasetFromGraph", "__inference_serve", None),
}


@pytest.fixture(scope="module")
def risky_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_risky_models(tmp_path_factory.mktemp("risky_models"))


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    settings = settings_for(tmp_path / "kiln")
    async with running_api(settings) as (_, client):
        yield settings, client


@pytest.mark.parametrize("model", sorted(REFUSED))
async def test_ingest_forbidden_ops_refused(model: str, risky_models: Path, env: Env) -> None:
    settings, client = env
    op, where, touched = REFUSED[model]
    resp = await client.post("/v1/compile", files={"model": ("m.tgz", tar_folder(risky_models / model))})
    body = assert_problem(resp, 422, "forbidden_ops")
    detail = body["detail"]
    assert f"runs ops that are not allowed: {op}" in detail, detail
    assert where in detail and "For safety" in detail, detail
    assert stored_files(settings) == []
    if touched is not None:
        assert not Path(touched).exists()


@pytest.mark.parametrize("model", ["keras_ok", "print_to_stderr", "lookup_ok"])
async def test_ingest_normal_models_accepted(model: str, risky_models: Path, env: Env) -> None:
    _, client = env
    form = {"input_shapes": '{"w": [4]}'} if model == "lookup_ok" else {}
    resp = await client.post("/v1/compile", files={"model": ("m.tgz", tar_folder(risky_models / model))},
                             data=form)
    assert resp.status_code == 202, resp.text
    assert resp.json()["status"] == "queued"


def _library_ops(pb: bytes) -> set[str]:
    """Every op type in the first meta graph, top-level nodes and library functions alike."""
    meta = next(message(v) for n, _, v in fields(memoryview(pb)) if n == 2)
    graph = index_graph(next(message(v) for n, _, v in fields(meta) if n == 2))
    ops = {node.op for node in graph.nodes.values()}
    return ops | {node.op for nodes in graph.functions.values() for node in nodes}


def test_ingest_saver_ops_present_but_not_reached(risky_models: Path) -> None:
    # The Keras SavedModel's own saver holds SaveV2/RestoreV2 (forbidden in a serving function):
    # the scan only judges what serving_default reaches, so the model is not refused for them.
    ops = _library_ops((risky_models / "keras_ok" / "saved_model.pb").read_bytes())
    assert {"SaveV2", "RestoreV2", "MergeV2Checkpoints"} <= ops
    assert {"SaveV2", "RestoreV2"} <= set(FORBIDDEN_OPS)


def test_ingest_scan_never_imports_tensorflow(risky_models: Path) -> None:
    # In a fresh interpreter: other suites of the same pytest run may have imported TensorFlow.
    code = ("import sys; from pathlib import Path; from kiln_service._savedmodel_proto import "
            "parse_saved_model as p; m = p(Path(sys.argv[1]).read_bytes()); "
            "print([f.op for f in m[0].signatures['serving_default'].forbidden], "
            "'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(risky_models / "write_file" / "saved_model.pb")],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip() == "['WriteFile'] False"
