"""Hand-written ``tf.Module`` signatures for ``test_unseen_models.py``, written as their users
write them: a ``tf.function`` ``__call__`` with an input signature, weights as variables."""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf


def normal(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def ints(low: int, high: int, *shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, size=shape).astype("int32")


def weights(*shape: int, seed: int = 1) -> tf.Variable:
    return tf.Variable(normal(*shape, seed=seed) * 0.5)


class Weighted(tf.Module):  # type: ignore[misc]
    """A hand-written module with one weight matrix ``w`` of shape ``SHAPE``."""

    SHAPE: tuple[int, ...] = (4, 4)

    def __init__(self) -> None:
        super().__init__()
        self.w = weights(*self.SHAPE)


class Scan(Weighted):
    """A running sum over time with tf.scan, and a tf.foldl over the features."""

    SHAPE = (3, 3)

    @tf.function(input_signature=[tf.TensorSpec([None, 5, 3], tf.float32)])  # type: ignore[misc]
    def __call__(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        steps = tf.transpose(x, [1, 0, 2])
        running = tf.scan(lambda acc, step: tf.tanh(acc @ self.w + step), steps)
        total = tf.foldl(lambda acc, step: acc + step * 0.5, steps)
        return {"running": tf.transpose(running, [1, 0, 2]), "total": total}


class TensorArrayLoop(tf.Module):  # type: ignore[misc]
    """A hand-written RNN over however many steps the input has (TensorArray, tf.range)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = weights(4, 4)
        self.u = weights(4, 4, seed=2)

    @tf.function(input_signature=[tf.TensorSpec([None, None, 4], tf.float32)])  # type: ignore[misc]
    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        steps = tf.shape(x)[1]
        outputs = tf.TensorArray(tf.float32, size=steps)
        h = tf.zeros_like(x[:, 0])
        for t in tf.range(steps):
            h = tf.tanh(h @ self.w + x[:, t] @ self.u)
            outputs = outputs.write(t, h)
        return tf.transpose(outputs.stack(), [1, 0, 2])


class GraphReadout(Weighted):
    """A GNN readout: node features (the batch axis is nodes) summed per graph."""

    SHAPE = (4, 6)

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="nodes"),
                                  tf.TensorSpec([None], tf.int32, name="segments")])  # type: ignore[misc]
    def __call__(self, nodes: tf.Tensor, segments: tf.Tensor) -> dict[str, tf.Tensor]:
        hidden = tf.nn.relu(nodes @ self.w)
        pooled = tf.math.unsorted_segment_sum(hidden, segments, num_segments=3)
        counts = tf.math.unsorted_segment_sum(tf.ones_like(segments), segments, num_segments=3)
        return {"pooled": pooled, "counts": counts, "hidden": hidden}


def graph_inputs(batch: int, seed: int) -> dict[str, np.ndarray]:
    return {"nodes": normal(batch, 4, seed=seed), "segments": ints(0, 3, batch, seed=seed)}


class GatherScatter(tf.Module):  # type: ignore[misc]
    """Embedding gathers, a batched gather_nd and a scatter_nd back into the input's shape."""

    def __init__(self) -> None:
        super().__init__()
        self.table = weights(10, 4)

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x"),
                                  tf.TensorSpec([None, 2], tf.int32, name="ids")])  # type: ignore[misc]
    def __call__(self, x: tf.Tensor, ids: tf.Tensor) -> dict[str, tf.Tensor]:
        embedded = tf.reduce_sum(tf.gather(self.table, ids), axis=1)
        picked = tf.gather_nd(x, tf.expand_dims(ids[:, :1] % 4, -1), batch_dims=1)
        rows = tf.range(tf.shape(x)[0])
        where = tf.stack([rows, ids[:, 1] % 4], axis=1)
        scattered = tf.scatter_nd(where, picked[:, 0] + 1.0, tf.shape(x))
        return {"embedded": embedded + x, "scattered": scattered}


def gather_inputs(batch: int, seed: int) -> dict[str, np.ndarray]:
    return {"x": normal(batch, 4, seed=seed), "ids": ints(0, 10, batch, 2, seed=seed)}


class Selection(Weighted):
    """tf.where(cond, x, y), clip_by_value, top_k, argmax → one_hot: float, int and bool outputs."""

    SHAPE = (6, 6)

    @tf.function(input_signature=[tf.TensorSpec([None, 6], tf.float32)])  # type: ignore[misc]
    def __call__(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        logits = x @ self.w
        chosen = tf.where(logits > 0.0, tf.clip_by_value(logits, 0.0, 1.5), logits * 0.1)
        values, indices = tf.math.top_k(logits, k=3)
        best = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return {"chosen": chosen, "top_values": values, "top_indices": indices,
                "one_hot": tf.one_hot(best, 6), "is_best_positive": tf.reduce_max(logits, -1) > 0}


class EinsumAttention(tf.Module):  # type: ignore[misc]
    """Self-attention written with einsum and batched matmul."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = weights(8, 3, 8)

    @tf.function(input_signature=[tf.TensorSpec([None, 5, 8], tf.float32)])  # type: ignore[misc]
    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        q, k, v = tf.unstack(tf.einsum("bsd,dke->kbse", x, self.qkv))
        scores = tf.nn.softmax(tf.einsum("bqd,bkd->bqk", q, k) / np.sqrt(8.0).astype("float32"))
        return tf.matmul(scores, v) + x


class LinearAlgebra(tf.Module):  # type: ignore[misc]
    """Cholesky of SPD matrices built from the input, a triangular solve and a log-determinant."""

    @tf.function(input_signature=[tf.TensorSpec([None, 4, 4], tf.float64)])  # type: ignore[misc]
    def __call__(self, a: tf.Tensor) -> dict[str, tf.Tensor]:
        spd = tf.matmul(a, a, transpose_b=True) + 4.0 * tf.eye(4, dtype=tf.float64)
        chol = tf.linalg.cholesky(spd)
        solved = tf.linalg.triangular_solve(chol, tf.ones_like(a[:, :, :1]), lower=True)
        return {"chol": chol, "solved": solved, "logdet": tf.linalg.logdet(spd)}


class Spectrum(tf.Module):  # type: ignore[misc]
    """Power spectrum of a signal with tf.signal.rfft (complex inside and out)."""

    @tf.function(input_signature=[tf.TensorSpec([None, 16], tf.float32)])  # type: ignore[misc]
    def __call__(self, signal: tf.Tensor) -> dict[str, tf.Tensor]:
        spectrum = tf.signal.rfft(signal)
        return {"power": tf.math.log1p(tf.abs(spectrum) ** 2), "spectrum": spectrum}


class IntegerLogic(tf.Module):  # type: ignore[misc]
    """int32 arithmetic and bool logic, no float in sight."""

    @tf.function(input_signature=[tf.TensorSpec([None, 5], tf.int32, name="a"),
                                  tf.TensorSpec([None, 5], tf.int32, name="b")])  # type: ignore[misc]
    def __call__(self, a: tf.Tensor, b: tf.Tensor) -> dict[str, tf.Tensor]:
        mixed = (a * 3 + b) // 2 % 7 - tf.reduce_max(b, axis=1, keepdims=True)
        flags = tf.math.logical_xor(a > b, tf.math.logical_and(a % 2 == 0, b >= 3))
        return {"mixed": mixed, "flags": flags, "count": tf.reduce_sum(tf.cast(flags, tf.int32), 1)}


def int_pair(batch: int, seed: int) -> dict[str, np.ndarray]:
    return {"a": ints(-9, 9, batch, 5, seed=seed), "b": ints(0, 6, batch, 5, seed=seed + 1)}


class Temperature(Weighted):
    """A batched input next to a scalar one (a softmax temperature, as users pass it)."""

    SHAPE = (4, 5)

    @tf.function(input_signature=[tf.TensorSpec([], tf.float32, name="temperature"),
                                  tf.TensorSpec([None, 4], tf.float32, name="x")])  # type: ignore[misc]
    def __call__(self, temperature: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
        return tf.nn.softmax(x @ self.w / temperature)


def temperature_inputs(batch: int, seed: int) -> dict[str, np.ndarray]:
    return {"temperature": np.float32(0.7), "x": normal(batch, 4, seed=seed)}


class DataDependentShapes(Weighted):
    """boolean_mask, unique and where(cond): outputs whose size depends on the values."""

    SHAPE = (4, 4)

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x"),
                                  tf.TensorSpec([None], tf.int32, name="ids")])  # type: ignore[misc]
    def __call__(self, x: tf.Tensor, ids: tf.Tensor) -> dict[str, tf.Tensor]:
        y = tf.tanh(x @ self.w)
        kept = tf.boolean_mask(y, y > 0.0)
        unique, positions = tf.unique(ids)
        where = tf.where(y > 0.5)
        return {"kept_sum": tf.reduce_sum(kept), "kept": kept * 2.0, "unique": unique,
                "positions": positions, "above": tf.gather_nd(y, where) - 0.5,
                "count": tf.shape(where)[0], "y": y}


class Prototypes(tf.Module):  # type: ignore[misc]
    """A batch next to a side input of a fixed shape (class prototypes the caller passes)."""

    @tf.function(input_signature=[tf.TensorSpec([5, 4], tf.float32, name="prototypes"),
                                  tf.TensorSpec([None, 4], tf.float32, name="x")])  # type: ignore[misc]
    def __call__(self, prototypes: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
        distances = tf.reduce_sum(tf.square(x[:, None, :] - prototypes[None]), axis=-1)
        return tf.nn.softmax(-distances)


def prototype_inputs(batch: int, seed: int) -> dict[str, np.ndarray]:
    return {"prototypes": normal(5, 4, seed=7), "x": normal(batch, 4, seed=seed)}


def data_inputs(batch: int, seed: int) -> dict[str, np.ndarray]:
    return {"x": normal(batch, 4, seed=seed), "ids": ints(0, 4, batch, seed=seed)}
