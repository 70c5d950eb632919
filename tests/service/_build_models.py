"""Build the tiny SavedModels the service tests upload (run in a subprocess: TensorFlow stays
out of the test process, so the tests can check that the API never imports it).

Usage: python _build_models.py OUT_DIR. Writes OUT_DIR/<model>/ and OUT_DIR/signatures.json (what
TensorFlow itself reports for every signature, to compare with Kiln's own decoder).
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf
import tf_keras


class TwoInputs(tf.Module):
    """``serving_default``: x [None, 3] float32 and ids [None, None, 4] int32; ``other``: z, any rank."""

    def __init__(self) -> None:
        self.w = tf.Variable(tf.ones([3, 2]))

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x"),
                                  tf.TensorSpec([None, None, 4], tf.int32, name="ids")])
    def serve(self, x: tf.Tensor, ids: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": tf.matmul(x, self.w), "s": tf.reduce_sum(ids, axis=[1, 2])}

    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32, name="z")])
    def other(self, z: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"z2": z * 2.0}


def keras_dense() -> tf_keras.Model:
    inputs = tf_keras.Input(shape=(4,), name="features", dtype="float32")
    outputs = tf_keras.layers.Dense(2, name="dense")(inputs)
    return tf_keras.Model(inputs, outputs)


def describe(path: str) -> dict[str, dict[str, list[object]]]:
    loaded = tf.saved_model.load(path)
    result: dict[str, dict[str, list[object]]] = {}
    for name, fn in loaded.signatures.items():
        _, kwargs = fn.structured_input_signature
        result[name] = {
            key: [spec.dtype.name, None if spec.shape.rank is None else spec.shape.as_list()]
            for key, spec in kwargs.items()
        }
    return result


def main(out: str) -> None:
    module = TwoInputs()
    two = os.path.join(out, "two_inputs")
    tf.saved_model.save(module, two, signatures={"serving_default": module.serve,
                                                 "other": module.other})
    dense = os.path.join(out, "keras_dense")
    keras_dense().save(dense, save_format="tf")
    with open(os.path.join(out, "signatures.json"), "w") as f:
        json.dump({"two_inputs": describe(two), "keras_dense": describe(dense)}, f)


if __name__ == "__main__":
    main(sys.argv[1])
