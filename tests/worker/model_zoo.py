"""Tiny SavedModels for the worker, integration and benchmark tests (run as a script).

    python tests/worker/model_zoo.py OUT_DIR KIND [KIND ...]

writes ``OUT_DIR/KIND/model.tar.gz`` (the SavedModel under a top folder ``model/``), the
SavedModel itself in ``OUT_DIR/KIND/model/`` and, for kinds that have them,
``OUT_DIR/KIND/example_inputs.npz``. Run in a subprocess so that test processes never
import TensorFlow themselves. Kinds:

- ``mlp``: x float32[None, 8] → {"logits": float32[None, 4]} (MatMul, BiasAdd, Relu, Tanh).
- ``mixed``: x float32[None, 6] → {"y"}: MatMul, Relu, Tanh, Sigmoid, Reshape, Mul.
- ``two_inputs``: a float32[None, 4], b int32[None, 4] → {"y"}; for generated inputs.
- ``dynamic``: x float32[None, None, 3] → {"y"}; needs ``input_shapes`` for generated inputs.
- ``table_writer``: inserts into a lookup table while serving; the tracer rejects it
  (UnsupportedModel: tables are kept only when the model just reads them).
- ``slow``: x float32[None, 4], n int32[] → a while loop of n steps; with the .npz written here
  (n = 2e9) it runs for many minutes, for cancel and timeout tests.
- ``asserting``: x float32[None, 4] → {"y"}, with ``tf.debugging.assert_greater(x, 100)`` and
  the message ``ASSERTION_TEXT``; the .npz written here (values in [0, 1)) fails it.
- ``bad_reshape``: x float32[None, 6] → {"y"} reshaped to [-1, 4]: a batch of one (the .npz
  written here) cannot be reshaped, so the model raises TensorFlow's own error.
- ``float16``, ``bfloat16``: x [None, 8] → {"y": [None, 4]} of that dtype (two MatMuls, Relu).
- ``nchw_float16``: x float16[None, 4, 8, 8] → a float16 NCHW Conv2D and AvgPool; TensorFlow's
  CPU kernels cannot run the pooling on any CPU (oneDNN, where on, runs only the convolution), so
  the reference outputs come from XLA.
- ``strings``: x float32[None, 3], words string[None] → {"y"}.
"""

from __future__ import annotations

import os
import sys
import tarfile
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np
import tensorflow as tf


class _Mixed(tf.Module):
    def __init__(self) -> None:
        rng = np.random.default_rng(1)
        self.w1 = tf.Variable(rng.standard_normal((6, 8)).astype(np.float32))
        self.w2 = tf.Variable(rng.standard_normal((8, 4)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, 6], tf.float32, name="x")])
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        h = tf.nn.relu(tf.matmul(x, self.w1))
        h = tf.tanh(h) * tf.sigmoid(h)
        h = tf.reshape(tf.matmul(h, self.w2), [-1, 2, 2])
        return {"y": tf.reshape(h * 0.5, [-1, 4])}


class _TwoInputs(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="a"),
                                  tf.TensorSpec([None, 4], tf.int32, name="b")])
    def serve(self, a: tf.Tensor, b: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": tf.nn.relu(a * 2.0 + tf.cast(b, tf.float32))}


class _Dynamic(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.float32, name="x")])
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": tf.reduce_sum(tf.nn.relu(x), axis=1)}


class _TableWriter(tf.Module):
    def __init__(self) -> None:
        self.table = tf.lookup.experimental.MutableHashTable(tf.int64, tf.float32, -1.0)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="ids")])
    def serve(self, ids: tf.Tensor) -> dict[str, tf.Tensor]:
        self.table.insert(ids, tf.cast(ids, tf.float32) * 10.0)  # state an inference graph cannot keep
        return {"y": self.table.lookup(ids) * 2.0}


class _Slow(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x"),
                                  tf.TensorSpec([], tf.int32, name="n")])
    def serve(self, x: tf.Tensor, n: tf.Tensor) -> dict[str, tf.Tensor]:
        _, y = tf.while_loop(lambda i, v: i < n, lambda i, v: (i + 1, v * 0.5 + 0.5),
                             (tf.constant(0), x))
        return {"y": y}


#: the message of the ``asserting`` model's assertion, as failures must quote it
ASSERTION_TEXT = "kiln-zoo: every input must exceed one hundred"


class _Asserting(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        tf.debugging.assert_greater(x, 100.0, message=ASSERTION_TEXT)
        return {"y": x * 2.0}


class _BadReshape(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 6], tf.float32, name="x")])
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": tf.reshape(x, [-1, 4]) + 1.0}


class _Half(tf.Module):
    """A 16-bit model: its signature takes and returns ``dtype`` (float16 or bfloat16)."""

    def __init__(self, dtype: tf.DType) -> None:
        rng = np.random.default_rng(5)
        self.w = tf.Variable(tf.cast(rng.standard_normal((8, 16)) * 0.3, dtype))
        self.v = tf.Variable(tf.cast(rng.standard_normal((16, 4)) * 0.3, dtype))
        self.serve = tf.function(self._serve, input_signature=[
            tf.TensorSpec([None, 8], dtype, name="x")])

    def _serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": tf.matmul(tf.nn.relu(tf.matmul(x, self.w)), self.v)}


class _NchwHalf(tf.Module):
    """A float16 NCHW convolution and average pooling: TensorFlow has no CPU kernel for the
    pooling (oneDNN, on CPUs where it is on, runs only the convolution), XLA compiles both."""

    def __init__(self) -> None:
        rng = np.random.default_rng(6)
        self.k = tf.Variable(rng.standard_normal((3, 3, 4, 8)).astype(np.float16) * 0.3)

    @tf.function(input_signature=[tf.TensorSpec([None, 4, 8, 8], tf.float16, name="x")])
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        conv = tf.nn.relu(tf.nn.conv2d(x, self.k, 1, "SAME", data_format="NCHW"))
        return {"y": tf.nn.avg_pool2d(conv, 2, 2, "VALID", data_format="NCHW")}


class _Strings(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x"),
                                  tf.TensorSpec([None], tf.string, name="words")])
    def serve(self, x: tf.Tensor, words: tf.Tensor) -> dict[str, tf.Tensor]:
        lengths = tf.cast(tf.strings.length(words), tf.float32)[:, None]
        return {"y": tf.nn.relu(tf.matmul(x, tf.ones([3, 3])) + 1.0) * lengths}


def _mlp() -> tf.Module:
    tf.keras.utils.set_random_seed(7)
    x = tf.keras.Input(shape=(8,), name="x")
    h = tf.keras.layers.Dense(16, activation="relu")(x)
    h = tf.keras.layers.Dense(16, activation="tanh")(h)
    return tf.keras.Model(x, {"logits": tf.keras.layers.Dense(4)(h)})


def build(kind: str, out: Path) -> None:
    """Write ``out/model.tar.gz`` (and ``out/example_inputs.npz`` where the kind has one)."""
    out.mkdir(parents=True, exist_ok=True)
    module = {"mlp": _mlp, "mixed": _Mixed, "two_inputs": _TwoInputs, "dynamic": _Dynamic,
              "table_writer": _TableWriter, "slow": _Slow, "asserting": _Asserting,
              "bad_reshape": _BadReshape, "float16": lambda: _Half(tf.float16),
              "bfloat16": lambda: _Half(tf.bfloat16), "nchw_float16": _NchwHalf,
              "strings": _Strings}[kind]()
    saved = out / "model"
    if isinstance(module, tf.keras.Model):
        tf.saved_model.save(module, str(saved))
    else:
        tf.saved_model.save(module, str(saved), signatures={"serving_default": module.serve})
    with tarfile.open(out / "model.tar.gz", "w:gz") as tar:
        tar.add(saved, arcname="model")
    rng = np.random.default_rng(3)
    if kind == "mlp":
        np.savez(out / "example_inputs.npz", x=rng.standard_normal((3, 8)).astype(np.float32))
    elif kind in ("float16", "bfloat16"):
        dtype = tf.as_dtype(kind).as_numpy_dtype  # numpy writes bfloat16 as 2-byte records
        np.savez(out / "example_inputs.npz", x=rng.standard_normal((2, 8)).astype(dtype))
    elif kind == "nchw_float16":
        np.savez(out / "example_inputs.npz", x=rng.random((1, 4, 8, 8)).astype(np.float16))
    elif kind == "strings":
        np.savez(out / "example_inputs.npz", x=rng.random((2, 3)).astype(np.float32),
                 words=np.array([b"kiln", b"glaze"]))
    elif kind == "slow":
        np.savez(out / "example_inputs.npz", x=rng.random((1, 4)).astype(np.float32),
                 n=np.array(2_000_000_000, np.int32))
    elif kind == "asserting":
        np.savez(out / "example_inputs.npz", x=rng.random((2, 4)).astype(np.float32))
    elif kind == "bad_reshape":
        np.savez(out / "example_inputs.npz", x=rng.random((1, 6)).astype(np.float32))


KINDS = ("mlp", "mixed", "two_inputs", "dynamic", "table_writer", "slow", "asserting",
         "bad_reshape", "float16", "bfloat16", "nchw_float16", "strings")

if __name__ == "__main__":
    for name in sys.argv[2:] or KINDS:
        build(name, Path(sys.argv[1]) / name)
