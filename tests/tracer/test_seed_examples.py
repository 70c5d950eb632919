"""The seed's two examples, verbatim except for the import line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

#: The seed's first example as a user runs it: a script in a fresh process, the import changed.
SEED_SCRIPT = """
import tensorflow as tf
import kiln_worker as tfn

input0 = tf.keras.layers.Input(3)
dense0 = tf.keras.layers.Dense(3)(input0)
model = tf.keras.Model(inputs=[input0], outputs=[dense0])

# Get a Neuron-optimized model
example_inputs = tf.random.uniform([1, 3])
model_neuron = tfn.trace(model, example_inputs)

# Export
model_dir = './model_neuron'
model_neuron.save(model_dir)
model_neuron_reloaded = tf.keras.models.load_model(model_dir)
tf.debugging.assert_near(model_neuron_reloaded(example_inputs), model(example_inputs))
print("keras from", type(model).__module__.split(".")[0])
"""


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


def _run_fresh(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh Python whose environment has no TF_USE_LEGACY_KERAS but ``env``."""
    base = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          env={**base, **env}, timeout=600)


def test_seed_example_runs_verbatim_without_keras_setting(tmp_path: Path) -> None:
    """TensorFlow 2.16+ makes tf.keras Keras 3, where ``Input(3)`` and ``load_model`` of a
    SavedModel fail; tensorflow-neuron's TensorFlow had Keras 2. Importing kiln_worker restores
    it, so the seed's script runs as it is, with no environment variable set by the user."""
    done = _run_fresh(SEED_SCRIPT, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "keras from tf_keras" in done.stdout
    assert (tmp_path / "model_neuron" / "saved_model.pb").is_file()


def test_user_choice_of_keras_3_is_kept(tmp_path: Path) -> None:
    code = ("import tensorflow as tf, numpy as np, kiln_worker as tfn\n"
            "print('keras from', tf.keras.Model.__module__.split('.')[0])\n"
            "inp = tf.keras.Input((3,)); model = tf.keras.Model(inp, tf.keras.layers.Dense(2)(inp))\n"
            "x = np.ones((1, 3), np.float32)\n"
            "np.testing.assert_allclose(tfn.trace(model, x)(x), model(x), rtol=1e-5)\n")
    done = _run_fresh(code, tmp_path, TF_USE_LEGACY_KERAS="0")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "keras from keras" in done.stdout
