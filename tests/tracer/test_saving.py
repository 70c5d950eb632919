"""The returned model (seed point 6): save, reload with both loaders, stay XLA-compiled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.tracer.conftest import max_rel_diff, mlp


def _xla_marked_calls(saved_model_dir: Path) -> list[str]:
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((saved_model_dir / "saved_model.pb").read_bytes())
    graph = proto.meta_graphs[0].graph_def
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    return [
        n.name
        for n in nodes
        if "kiln_subgraph_" in n.name
        and "_XlaMustCompile" in n.attr
        and n.attr["_XlaMustCompile"].b
    ]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import tensorflow as tf

    import kiln_worker

    model = mlp()
    x = np.random.default_rng(1).normal(size=(1, 32)).astype("float32")
    traced = kiln_worker.trace(model, x, subgraph_builder_function=lambda n: True)
    directory = tmp_path_factory.mktemp("saved") / "traced"
    traced.save(str(directory))
    return {"model": model, "traced": traced, "x": x, "dir": directory, "tf": tf}


def test_saved_model_has_serving_default_and_xla_marks(saved: dict[str, Any]) -> None:
    tf = saved["tf"]
    assert _xla_marked_calls(saved["dir"]), "no _XlaMustCompile call node in saved_model.pb"
    loaded = tf.saved_model.load(str(saved["dir"]))
    assert "serving_default" in loaded.signatures
    out = loaded.signatures["serving_default"](tf.constant(saved["x"]))
    assert max_rel_diff(saved["model"](saved["x"]), next(iter(out.values()))) < 1e-5


def test_reload_with_keras_and_run_at_other_batch(saved: dict[str, Any]) -> None:
    tf = saved["tf"]
    reloaded = tf.keras.models.load_model(str(saved["dir"]))
    batch = np.random.default_rng(2).normal(size=(5, 32)).astype("float32")
    assert max_rel_diff(saved["model"](batch), reloaded(batch)) < 1e-5


def test_report_survives_save(saved: dict[str, Any]) -> None:
    tf = saved["tf"]
    loaded = tf.saved_model.load(str(saved["dir"]))
    report = json.loads(loaded.kiln_report().numpy().decode())
    assert report == saved["traced"].report
    json.dumps(saved["traced"].report)  # JSON-serialisable
    assert saved["traced"].on_neuron_ratio == report["on_neuron_ratio"] == 1.0


def test_traced_model_holds_no_variables(saved: dict[str, Any]) -> None:
    assert saved["traced"].variables == []
    assert not (saved["dir"] / "variables" / "variables.data-00000-of-00001").exists() or (
        (saved["dir"] / "variables" / "variables.data-00000-of-00001").stat().st_size < 1024
    )
