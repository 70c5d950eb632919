"""The seed's two examples, verbatim except for the import line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def test_seed_example_trace_save_reload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    import tensorflow as tf

    import kiln_worker as tfn

    input0 = tf.keras.layers.Input(3)
    dense0 = tf.keras.layers.Dense(3)(input0)
    model = tf.keras.Model(inputs=[input0], outputs=[dense0])
    example_inputs = tf.random.uniform([1, 3])
    model_neuron = tfn.trace(model, example_inputs)  # trace

    model_dir = "./model_neuron"
    model_neuron.save(model_dir)
    model_neuron_reloaded = tf.keras.models.load_model(model_dir)

    expected = model(example_inputs).numpy()
    np.testing.assert_allclose(model_neuron(example_inputs).numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(model_neuron_reloaded(example_inputs).numpy(), expected, rtol=1e-5)
    assert (tmp_path / "model_neuron" / "saved_model.pb").is_file()


def test_seed_example_subgraph_builder_function_places_only_matmul() -> None:
    import tensorflow as tf

    import kiln_worker as tfn

    input0 = tf.keras.layers.Input(3)
    dense0 = tf.keras.layers.Dense(3)(input0)
    reshape0 = tf.keras.layers.Reshape([1, 3])(dense0)
    output0 = tf.keras.layers.Dense(2)(reshape0)
    model = tf.keras.Model(inputs=[input0], outputs=[output0])
    example_inputs = tf.random.uniform([1, 3])

    def subgraph_builder_function(node):  # type: ignore[no-untyped-def]
        return node.op == "MatMul"

    model_neuron = tfn.trace(
        model, example_inputs, subgraph_builder_function=subgraph_builder_function
    )

    subgraphs = model_neuron.report["subgraphs"]
    assert len(subgraphs) == 2
    for entry in subgraphs:
        assert entry["status"] == "compiled"
        assert set(entry["op_types"]) == {"MatMul"}
    cpu_types = {op["op"] for op in model_neuron.report["cpu_ops"]}
    assert "MatMul" not in cpu_types
    assert model_neuron.on_neuron_ratio == model_neuron.report["on_neuron_ratio"] > 0
    np.testing.assert_allclose(
        model_neuron(example_inputs).numpy(), model(example_inputs).numpy(), rtol=1e-5
    )
