"""Hand-written ``tf.Module`` signatures for ``test_unseen_models_2.py``: state and side effects
inside the call, Python callbacks, maps, image and sorting ops, linear algebra, unusual dtypes and
signatures with awkward names or several entries."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from tests.tracer.unseen_modules import Weighted, ints, normal, weights

F32 = tf.float32


def spec(shape: list[int | None], dtype: tf.DType = F32, name: str | None = None) -> tf.TensorSpec:
    return tf.TensorSpec(shape, dtype, name=name)


class CallCounter(Weighted):
    """Counts its calls in a variable (AssignAddVariableOp) and returns the count with its output."""

    SHAPE = (4, 3)

    def __init__(self) -> None:
        super().__init__()
        self.calls = tf.Variable(0, dtype=tf.int64, trainable=False)

    @tf.function(input_signature=[spec([None, 4])])  # type: ignore[misc]
    def __call__(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        self.calls.assign_add(1)
        return {"y": tf.nn.relu(x @ self.w)}


class NoisyStateless(Weighted):
    """Stateless random noise with a fixed seed: deterministic, so comparable."""

    SHAPE = (4, 4)

    @tf.function(input_signature=[spec([None, 4])])  # type: ignore[misc]
    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        noise = tf.random.stateless_uniform(tf.shape(x), seed=[3, 7])
        gauss = tf.random.stateless_normal(tf.shape(x), seed=[1, 2])
        return x @ self.w + 0.1 * noise + 0.01 * gauss


class NoisyStateful(Weighted):
    """tf.random.uniform inside the call: a fresh draw every call."""

    SHAPE = (4, 4)

    @tf.function(input_signature=[spec([None, 4])])  # type: ignore[misc]
    def __call__(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": tf.tanh(x @ self.w), "noise": tf.random.uniform(tf.shape(x))}


class PrintAndAssert(Weighted):
    """tf.print and tf.debugging.assert_* inside the function (side effects, no output)."""

    SHAPE = (4, 4)

    @tf.function(input_signature=[spec([None, 4])])  # type: ignore[misc]
    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        tf.debugging.assert_all_finite(x, "x must be finite")
        tf.debugging.assert_rank(x, 2)
        y = tf.nn.softmax(x @ self.w)
        tf.debugging.assert_non_negative(y)
        tf.print("max prob", tf.reduce_max(y))
        return y


def _numpy_scale(x: np.ndarray) -> np.ndarray:
    return (np.asarray(x) * 2.0 + 1.0).astype(np.float32)


class PythonCallback(Weighted):
    """tf.numpy_function and tf.py_function inside the model."""

    SHAPE = (4, 4)

    @tf.function(input_signature=[spec([None, 4])])  # type: ignore[misc]
    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        y = tf.numpy_function(_numpy_scale, [x @ self.w], F32)
        z = tf.py_function(lambda t: tf.sqrt(tf.abs(t)), [y], F32)
        z.set_shape(x.shape)
        return tf.nn.relu(z)


class MapFunctions(Weighted):
    """tf.map_fn (a While over rows) and tf.vectorized_map (pfor)."""

    SHAPE = (4, 4)

    @tf.function(input_signature=[spec([None, 3, 4])])  # type: ignore[misc]
    def __call__(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        mapped = tf.map_fn(lambda row: tf.reduce_max(row @ self.w, axis=0), x)
        vectorized = tf.vectorized_map(lambda row: tf.linalg.trace(row[:, :3]) + row @ self.w, x)
        return {"mapped": mapped, "vectorized": vectorized}


class ImageOps(tf.Module):  # type: ignore[misc]
    """tf.image resizing (three methods), crop_and_resize, flips and rot90."""

    @tf.function(input_signature=[spec([None, 8, 8, 3])])  # type: ignore[misc]
    def __call__(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        batch = tf.shape(images)[0]
        boxes = tf.tile([[0.1, 0.2, 0.8, 0.9]], [batch, 1])
        crops = tf.image.crop_and_resize(images, boxes, tf.range(batch), [5, 5])
        return {
            "bilinear": tf.image.resize(images, [12, 12]),
            "nearest": tf.image.resize(images, [5, 5], method="nearest"),
            "bicubic": tf.image.resize(images, [6, 6], method="bicubic", antialias=True),
            "crops": crops,
            "flipped": tf.image.flip_left_right(tf.image.flip_up_down(images)),
            "rotated": tf.image.rot90(images),
            "gray": tf.image.rgb_to_grayscale(images),
        }


class SortAndScan(tf.Module):  # type: ignore[misc]
    """sort, argsort, cumsum and cumprod (exclusive, reverse)."""

    @tf.function(input_signature=[spec([None, 6])])  # type: ignore[misc]
    def __call__(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {
            "sorted": tf.sort(x, direction="DESCENDING"),
            "order": tf.argsort(x, stable=True),
            "cumsum": tf.math.cumsum(x, axis=1, exclusive=True, reverse=True),
            "cumprod": tf.math.cumprod(1.0 + 0.1 * x, axis=1),
        }


class BitwiseOps(tf.Module):  # type: ignore[misc]
    """Bitwise and/or/xor/invert/shifts on int32 and uint8."""

    @tf.function(input_signature=[spec([None, 5], tf.int32, "a"),
                                  spec([None, 5], tf.uint8, "b")])  # type: ignore[misc]
    def __call__(self, a: tf.Tensor, b: tf.Tensor) -> dict[str, tf.Tensor]:
        bits = tf.bitwise
        b32 = tf.cast(b, tf.int32)
        return {
            "mixed": bits.bitwise_xor(bits.bitwise_and(a, 0x5A), bits.bitwise_or(b32, 3)),
            "shifted": bits.left_shift(a, 2) + bits.right_shift(a, 1),
            "inverted": bits.invert(b),
            "popcount": tf.raw_ops.PopulationCount(x=b),
        }


class SegmentOps(tf.Module):  # type: ignore[misc]
    """Sorted segment sum/mean/max (the output size is the largest id + 1: data-dependent)."""

    @tf.function(input_signature=[spec([None, 3], F32, "values"),
                                  spec([None], tf.int32, "ids")])  # type: ignore[misc]
    def __call__(self, values: tf.Tensor, ids: tf.Tensor) -> dict[str, tf.Tensor]:
        return {
            "sum": tf.math.segment_sum(values, ids),
            "mean": tf.math.segment_mean(values, ids),
            "max": tf.math.segment_max(values, ids),
        }


def segment_inputs(batch: int, seed: int) -> dict[str, np.ndarray]:
    ids = np.sort(ints(0, 3, batch, seed=seed))
    return {"values": normal(batch, 3, seed=seed), "ids": ids}


class Decompositions(tf.Module):  # type: ignore[misc]
    """QR, SVD, inverse and determinant of small matrices."""

    @tf.function(input_signature=[spec([None, 4, 4])])  # type: ignore[misc]
    def __call__(self, a: tf.Tensor) -> dict[str, tf.Tensor]:
        well = a + 4.0 * tf.eye(4)
        q, r = tf.linalg.qr(well)
        s, u, v = tf.linalg.svd(well)
        return {
            "q": q, "r": r, "singular": s,
            "rebuilt": tf.matmul(u * s[:, None, :], v, adjoint_b=True),
            "inverse": tf.linalg.inv(well), "det": tf.linalg.det(well),
        }


class ShortTimeFourier(tf.Module):  # type: ignore[misc]
    """A log-magnitude spectrogram with tf.signal.stft (frames, a window, an FFT)."""

    @tf.function(input_signature=[spec([None, 64])])  # type: ignore[misc]
    def __call__(self, signal: tf.Tensor) -> dict[str, tf.Tensor]:
        stft = tf.signal.stft(signal, frame_length=16, frame_step=8, fft_length=16)
        return {"log_magnitude": tf.math.log(tf.abs(stft) + 1e-6), "stft": stft}


class UnsignedInputs(tf.Module):  # type: ignore[misc]
    """uint16, uint32 and uint64 inputs: arithmetic and comparisons in their own dtypes."""

    @tf.function(input_signature=[spec([None, 4], tf.uint16, "u16"),
                                  spec([None, 4], tf.uint32, "u32"),
                                  spec([None, 4], tf.uint64, "u64")])  # type: ignore[misc]
    def __call__(self, u16: tf.Tensor, u32: tf.Tensor, u64: tf.Tensor) -> dict[str, tf.Tensor]:
        wide = tf.cast(u16, tf.uint32) * 3 + u32 // 2
        return {"wide": wide, "biggest": tf.maximum(u64, tf.cast(wide, tf.uint64)) + 1,
                "scaled": tf.cast(u16, F32) / 65535.0}


def unsigned_inputs(batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"u16": rng.integers(0, 2**16, (batch, 4)).astype(np.uint16),
            "u32": rng.integers(0, 2**32, (batch, 4)).astype(np.uint32),
            "u64": rng.integers(0, 2**62, (batch, 4)).astype(np.uint64)}


class QuantizedInput(Weighted):
    """int8 activations, dequantized with a scale before a matmul."""

    SHAPE = (6, 3)

    @tf.function(input_signature=[spec([None, 6], tf.int8)])  # type: ignore[misc]
    def __call__(self, q: tf.Tensor) -> tf.Tensor:
        return tf.cast(q, F32) * 0.05 @ self.w


def int8_inputs(batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-128, 128, (batch, 6)).astype(np.int8)


class ComplexInput(tf.Module):  # type: ignore[misc]
    """complex64 in: magnitude, phase and an inverse FFT."""

    @tf.function(input_signature=[spec([None, 8], tf.complex64)])  # type: ignore[misc]
    def __call__(self, z: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"magnitude": tf.abs(z), "phase": tf.math.angle(z), "signal": tf.signal.ifft(z),
                "conj": tf.math.conj(z) * tf.complex(2.0, 0.0)}


def complex_inputs(batch: int, seed: int) -> np.ndarray:
    return (normal(batch, 8, seed=seed) + 1j * normal(batch, 8, seed=seed + 9)).astype(np.complex64)


class BoolOnly(tf.Module):  # type: ignore[misc]
    """A bool input alone: logic and counts, no other dtype in."""

    @tf.function(input_signature=[spec([None, 6], tf.bool)])  # type: ignore[misc]
    def __call__(self, flags: tf.Tensor) -> dict[str, tf.Tensor]:
        shifted = tf.roll(flags, 1, axis=1)
        return {"any": tf.reduce_any(flags, 1), "edges": tf.math.logical_xor(flags, shifted),
                "count": tf.reduce_sum(tf.cast(flags, tf.int32), 1)}


def bool_inputs(batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, (batch, 6)).astype(bool)


class AwkwardNames(Weighted):
    """Input names with '-' and '.', output keys with spaces and a leading digit."""

    SHAPE = (4, 4)

    @tf.function(input_signature=[spec([None, 4], F32, "pixel-values"),
                                  spec([None, 4], F32, "mask.v2")])  # type: ignore[misc]
    def __call__(self, pixels: tf.Tensor, mask: tf.Tensor) -> dict[str, tf.Tensor]:
        y = (pixels * mask) @ self.w
        return {"class scores": y, "0th-logit": y[:, 0], "probs.softmax": tf.nn.softmax(y)}


def awkward_inputs(batch: int, seed: int) -> dict[str, np.ndarray]:
    return {"pixel-values": normal(batch, 4, seed=seed),
            "mask.v2": (normal(batch, 4, seed=seed + 1) > 0).astype("float32")}


class NestedOutputs(Weighted):
    """Returns a tuple of (tensor, dict of a tensor and a list)."""

    SHAPE = (4, 4)

    @tf.function(input_signature=[spec([None, 4])])  # type: ignore[misc]
    def __call__(self, x: tf.Tensor) -> tuple[tf.Tensor, dict[str, object]]:
        y = x @ self.w
        return y, {"max": tf.reduce_max(y, 1), "parts": [tf.nn.relu(y), tf.sigmoid(y)]}


class SeveralSignatures(Weighted):
    """A module saved with three signatures; ``serving_default`` is not the first."""

    SHAPE = (4, 4)

    @tf.function(input_signature=[spec([None, 4], F32, "x")])  # type: ignore[misc]
    def embed(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"embedding": tf.tanh(x @ self.w)}

    @tf.function(input_signature=[spec([None, 4], F32, "x")])  # type: ignore[misc]
    def __call__(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"scores": tf.nn.softmax(x @ self.w * 2.0)}

    @tf.function(input_signature=[spec([None, 3], tf.int32, "ids")])  # type: ignore[misc]
    def lookup(self, ids: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"rows": tf.gather(self.w, ids % 4)}


def named_x(batch: int, seed: int) -> dict[str, np.ndarray]:
    return {"x": normal(batch, 4, seed=seed)}


def save_several_signatures(module: SeveralSignatures, directory: Path) -> Path:
    signatures = {"a_embed": module.embed, "b_lookup": module.lookup,
                  "serving_default": module.__call__}
    tf.saved_model.save(module, str(directory), signatures=signatures)
    return directory


class SparseInput(tf.Module):  # type: ignore[misc]
    """A tf.SparseTensor input (bag of feature ids with weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.table = weights(10, 3)

    @tf.function(input_signature=[tf.SparseTensorSpec([None, 10], F32)])  # type: ignore[misc]
    def __call__(self, features: tf.SparseTensor) -> tf.Tensor:
        return tf.sparse.sparse_dense_matmul(features, self.table)


class RaggedInput(tf.Module):  # type: ignore[misc]
    """A tf.RaggedTensor input (variable-length rows), mean-pooled."""

    @tf.function(input_signature=[tf.RaggedTensorSpec([None, None, 3], F32, 1)])  # type: ignore[misc]
    def __call__(self, rows: tf.RaggedTensor) -> tf.Tensor:
        return tf.reduce_mean(rows, axis=1)


class CtcDecoder(Weighted):
    """Logits over time, greedily CTC-decoded (a SparseTensor of labels)."""

    SHAPE = (4, 5)

    @tf.function(input_signature=[spec([None, 6, 4])])  # type: ignore[misc]
    def __call__(self, x: tf.Tensor) -> tuple[tf.SparseTensor, tf.Tensor]:
        logits = tf.transpose(x @ self.w, [1, 0, 2])
        lengths = tf.fill([tf.shape(x)[0]], 6)
        decoded, neg_sum = tf.nn.ctc_greedy_decoder(logits, lengths)
        return decoded[0], neg_sum


class SymmetricEigen(tf.Module):  # type: ignore[misc]
    """Eigen-decomposition of symmetric matrices: XLA's eigenvectors differ from LAPACK's (signs),
    so the subgraph holding it must stay on CPU for the model to match."""

    @tf.function(input_signature=[spec([None, 3, 3])])  # type: ignore[misc]
    def __call__(self, a: tf.Tensor) -> dict[str, tf.Tensor]:
        values, vectors = tf.linalg.eigh(a + tf.linalg.matrix_transpose(a))
        return {"values": values, "vectors": vectors}


class BucketsAndChecks(tf.Module):  # type: ignore[misc]
    """Bucketize, a histogram over the batch, logsumexp, band_part, check_numerics and
    ensure_shape, the input's shape and a constant as outputs."""

    @tf.function(input_signature=[spec([None, 6])])  # type: ignore[misc]
    def __call__(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        checked = tf.debugging.check_numerics(tf.ensure_shape(x, [None, 6]), "x is not finite")
        return {
            "bins": tf.raw_ops.Bucketize(input=checked, boundaries=[-1.0, 0.0, 1.0]),
            "histogram": tf.histogram_fixed_width(x, [-2.0, 2.0], nbins=5),
            "logsumexp": tf.math.reduce_logsumexp(x, 1),
            "upper": tf.linalg.band_part(tf.reshape(x[:, :4], [-1, 2, 2]), 0, -1),
            "shape": tf.shape(x), "constant": tf.constant([1.0, 2.0]),
        }


def sparse_components(batch: int, seed: int) -> dict[str, np.ndarray]:
    """A SparseTensor input as a SavedModel signature takes it: indices, values, dense shape."""
    dense = normal(batch, 10, seed=seed) * (normal(batch, 10, seed=seed + 5) > 0.3)
    sparse = tf.sparse.from_dense(dense)
    return {"features": sparse.indices.numpy(), "features_1": sparse.values.numpy(),
            "features_2": sparse.dense_shape.numpy()}


def ragged_components(batch: int, seed: int) -> dict[str, np.ndarray]:
    """A RaggedTensor input as a SavedModel signature takes it: flat values, row splits."""
    lengths = np.random.default_rng(seed).integers(1, 4, batch)
    return {"rows": normal(int(lengths.sum()), 3, seed=seed),
            "rows_1": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)}
