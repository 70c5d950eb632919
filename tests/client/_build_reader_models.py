"""Real SavedModels for the SavedModel-reader tests (run as a script: ``OUT_DIR``).

Writes ``OUT_DIR/<kind>/saved_model.pb`` (and the rest of each SavedModel) for: a Keras MLP, a
conv net, an RNN (LSTM), a model with string inputs, and a module with several signatures
and inputs of many dtypes, an unknown rank and open dimensions. Run in a subprocess so that the
test process does not build models with TensorFlow itself.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import tensorflow as tf

keras = tf.keras


def _mlp() -> keras.Model:
    x = keras.Input(shape=(8,), name="features")
    h = keras.layers.Dense(16, activation="relu")(x)
    return keras.Model(x, {"logits": keras.layers.Dense(3)(h)})


def _conv() -> keras.Model:
    x = keras.Input(shape=(16, 16, 3), name="image")
    h = keras.layers.Conv2D(4, 3, activation="relu")(x)
    h = keras.layers.MaxPooling2D()(h)
    return keras.Model(x, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(h)))


def _rnn() -> keras.Model:
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(50, 8)(tokens)
    h = keras.layers.LSTM(8)(h)
    return keras.Model(tokens, keras.layers.Dense(1, activation="sigmoid")(h))


class _Strings(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text"),
                                  tf.TensorSpec([None, 2], tf.float32, name="numbers")])
    def serve(self, text: tf.Tensor, numbers: tf.Tensor) -> dict[str, tf.Tensor]:
        lengths = tf.cast(tf.strings.length(text), tf.float32)
        return {"score": lengths + tf.reduce_sum(numbers, axis=1),
                "upper": tf.strings.upper(text)}


class _Multi(tf.Module):
    def __init__(self) -> None:
        self.w = tf.Variable(tf.ones([4]))

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def predict(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": x * self.w}

    @tf.function(input_signature=[tf.TensorSpec(None, tf.float64, name="anything"),
                                  tf.TensorSpec([2, None, 3], tf.int64, name="ids"),
                                  tf.TensorSpec([], tf.bool, name="flag"),
                                  tf.TensorSpec([None], tf.float16, name="half"),
                                  tf.TensorSpec([1], tf.uint8, name="byte")])
    def mixed(self, anything: tf.Tensor, ids: tf.Tensor, flag: tf.Tensor, half: tf.Tensor,
              byte: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"sum": tf.reduce_sum(anything), "ids": ids + 1, "flag": tf.logical_not(flag),
                "half": half * 2, "byte": tf.cast(byte, tf.int32)}


def main(out: Path) -> None:
    for name, build in (("mlp", _mlp), ("conv", _conv), ("rnn", _rnn)):
        tf.saved_model.save(build(), str(out / name))
    strings = _Strings()
    tf.saved_model.save(strings, str(out / "strings"), signatures={"serving_default": strings.serve})
    multi = _Multi()
    tf.saved_model.save(multi, str(out / "multi"),
                        signatures={"serving_default": multi.predict, "mixed": multi.mixed})


if __name__ == "__main__":
    main(Path(sys.argv[1]))
