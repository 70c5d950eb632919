"""Every model of the zoos passes the op scan (the allowlist of ``kiln_service._allowed_ops``).

The SavedModels are real, built once by TensorFlow in a subprocess (``_build_op_zoo.py``: the
integration zoo, Keras preprocessing and recurrent layers, a mix of Keras layers,
``tf.lookup`` tables from tensors and asset files, control flow, strings, random numbers and
TensorLists in a ``tf.function``); the test process decodes them with Kiln's own reader, as the
API does. ``python _build_op_zoo.py OUT --full`` adds the bench zoo and the Keras applications
for a manual check (31 models passed when the list was made).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kiln_client import _savedmodel as reader
from kiln_service import ingest
from kiln_service._allowed_ops import LOAD_TIME_ONLY
from kiln_service._graph_scan import GraphIndex, index_graph
from kiln_service._savedmodel_proto import INIT_OP_SIGNATURE, parse_saved_model

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def op_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("op_zoo")
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, str(HERE / "_build_op_zoo.py"), str(out)], env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _reached_ops(data: bytes, outputs: list[str]) -> set[str]:
    graphs: list[GraphIndex] = []
    reader.parse_saved_model(data, on_graph_def=lambda _, g: graphs.append(index_graph(g)))
    return {node.op for node, _ in graphs[0].reached(outputs) if node.op not in graphs[0].functions}


def test_every_zoo_model_passes_the_op_scan(op_zoo: Path) -> None:
    models = sorted(p for p in op_zoo.iterdir() if (p / "saved_model.pb").is_file())
    assert len(models) >= 8, [m.name for m in models]
    every: set[str] = set()
    for folder in models:
        data = (folder / "saved_model.pb").read_bytes()
        signatures = parse_saved_model(data)[0].signatures
        serving = ingest.select_signature(signatures, "serving_default")  # raises if refused
        every |= _reached_ops(data, [t.name for t in serving.outputs.values()])
        init = signatures.get(INIT_OP_SIGNATURE)
        loading = _reached_ops(data, [t.name for t in init.outputs.values()]) if init else set()
        if folder.name == "integration_asset_table":  # its vocabulary asset is read on load
            assert loading & LOAD_TIME_ONLY, loading
    print(f"\n{len(models)} models, {len(every)} op types reached: {sorted(every)}")
    # The zoo reaches the families the list is made of, not only a corner of it.
    assert {"Conv2D", "MatMul", "StatelessWhile", "LookupTableFindV2", "StringSplitV2",
            "TensorListStack", "StatelessRandomUniformV2", "RFFT", "Cast"} <= every
