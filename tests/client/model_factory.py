"""Small real TensorFlow models for the contract tests (TensorFlow imported on call only)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def keras_model(seed: int = 0) -> Any:
    """A two-layer dense model: x (None, 3) -> (None, 2), with fixed weights."""
    import tensorflow as tf
    import tf_keras as keras

    tf.random.set_seed(seed)
    inputs = keras.Input(shape=(3,), name="x")
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    outputs = keras.layers.Dense(2)(hidden)
    return keras.Model(inputs, outputs)


def save_model(path: Path, seed: int = 0) -> Path:
    """Write the model as a SavedModel directory at ``path``."""
    keras_model(seed).save(str(path))
    return path


def example_input(batch: int = 1) -> np.ndarray:
    return np.random.default_rng(42).standard_normal((batch, 3)).astype("float32")


def run_saved_model(path: Path, x: np.ndarray) -> np.ndarray:
    """Run the serving_default signature of a SavedModel on ``x``."""
    import tensorflow as tf

    fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    name = next(iter(fn.structured_input_signature[1]))
    (out,) = fn(**{name: tf.constant(x)}).values()
    return np.asarray(out)


def save_lookup_model(path: Path) -> Path:
    """A SavedModel the tracer rejects: it writes to a lookup table (ids int64 [None] -> v).

    (A model that only reads its tables compiles: the tables are carried along.)
    """
    import tensorflow as tf

    class Lookup(tf.Module):
        def __init__(self) -> None:
            self.table = tf.lookup.experimental.MutableHashTable(tf.int64, tf.float32, -1.0)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="ids")])
        def serve(self, ids: Any) -> Any:
            self.table.insert(ids, tf.cast(ids, tf.float32) * 10.0)
            return {"v": self.table.lookup(ids) * 2.0}

    module = Lookup()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path
