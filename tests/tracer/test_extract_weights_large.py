"""--extract-weights on a model whose weights exceed the 2 GB protobuf limit (slow)."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest


@pytest.mark.slow
def test_extract_weights_over_2gb(tmp_path: Path) -> None:
    import tensorflow as tf

    import kiln_worker

    width = 16384  # three 16384x16384 float32 kernels: 3 GiB of weights
    inputs = tf.keras.Input(width)
    x = inputs
    for _ in range(3):
        x = tf.keras.layers.Dense(width, use_bias=False, kernel_initializer="zeros")(x)
    model = tf.keras.Model(inputs, x)
    for layer in model.layers[1:]:
        # Cheap, distinct weights without a second 1 GB temporary per layer.
        layer.kernel.assign(tf.linalg.diag(tf.fill([width], 0.5)))
    gc.collect()
    total = sum(int(np.prod(v.shape)) * 4 for v in model.variables)
    assert total > 2 * 1024**3

    example = np.linspace(-1, 1, width, dtype="float32")[None, :]
    traced = kiln_worker.trace(model, example, flags="--extract-weights")
    np.testing.assert_allclose(traced(example).numpy(), example * 0.125, rtol=1e-6)
    traced.save(str(tmp_path / "big"))
    assert (tmp_path / "big" / "saved_model.pb").stat().st_size < 10 * 1024**2
    del traced, model
    tf.keras.backend.clear_session()
    gc.collect()
    reloaded = tf.saved_model.load(str(tmp_path / "big"))
    out = next(iter(reloaded.signatures["serving_default"](tf.constant(example)).values()))
    np.testing.assert_allclose(out.numpy(), example * 0.125, rtol=1e-6)
