"""Models users have that the zoo did not cover, each on the user's path (``check_roundtrip``).

Keras applications and layers built as their users build them (``weights=None`` at small input
sizes), and hand-written ``tf.Module`` signatures using the ops such modules use: loops over
time, segment sums, gathers and scatters, top-k, linear algebra, FFTs, integer and bool logic,
scalar inputs next to batched ones, and ops whose output size depends on the data (these cannot be
compiled at an unknown size; they stay on CPU and must still work). Each is traced in memory and
through save → ``tf.saved_model.load`` → trace the serving signature → save → reload → serve at
another batch, and must match the original there (tolerances of ``tests/tracer/roundtrip.py``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf
from tests.tracer.roundtrip import check_roundtrip

layers = tf.keras.layers


def _normal(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _ints(low: int, high: int, *shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, size=shape).astype("int32")


def _weights(*shape: int, seed: int = 1) -> tf.Variable:
    return tf.Variable(_normal(*shape, seed=seed) * 0.5)


# --- Keras applications and layers ------------------------------------------------------------


def _application(name: str) -> Callable[[], Any]:
    def build() -> Any:
        tf.keras.utils.set_random_seed(0)
        factory = getattr(tf.keras.applications, name)
        return factory(weights=None, input_shape=(32, 32, 3), classes=10)

    return build


def _conv1d() -> Any:
    inputs = tf.keras.Input((20, 3))
    x = layers.Conv1D(8, 3, activation="relu")(inputs)
    x = layers.MaxPool1D(2)(x)
    x = layers.Conv1D(8, 3, padding="same")(x)
    return tf.keras.Model(inputs, layers.Dense(2)(layers.GlobalMaxPool1D()(x)))


def _embedding_mean() -> Any:
    inputs = tf.keras.Input((7,), dtype="int32")
    x = layers.Embedding(30, 8, mask_zero=True)(inputs)
    x = layers.GlobalAveragePooling1D()(x)  # averages over the unmasked steps only
    return tf.keras.Model(inputs, layers.Dense(3, activation="softmax")(x))


def _padded_ids(batch: int, seed: int) -> np.ndarray:
    ids = _ints(1, 30, batch, 7, seed=seed)
    ids[0, 4:] = 0
    ids[-1, 2:] = 0
    return ids


def _video() -> Any:
    inputs = tf.keras.Input((4, 8, 8, 3))
    x = layers.TimeDistributed(layers.Conv2D(4, 3, activation="relu"))(inputs)
    x = layers.TimeDistributed(layers.GlobalAveragePooling2D())(x)
    x = layers.TimeDistributed(layers.Dense(6))(x)
    return tf.keras.Model(inputs, layers.Dense(2)(layers.LSTM(5)(x)))


def _lstm_states() -> Any:
    inputs = tf.keras.Input((6, 4))
    sequence, hidden, cell = layers.LSTM(8, return_sequences=True, return_state=True)(inputs)
    return tf.keras.Model(inputs, [layers.Dense(2)(sequence), hidden, cell])


def _stacked_gru() -> Any:
    inputs = tf.keras.Input((6, 4))
    x = layers.GRU(8, return_sequences=True, dropout=0.2, recurrent_dropout=0.2)(inputs)
    x = layers.GRU(6, dropout=0.1)(x)
    return tf.keras.Model(inputs, layers.Dense(2)(layers.Dropout(0.5)(x)))


def _batch_norm_mlp() -> Any:
    inputs = tf.keras.Input(10)
    x = layers.Dense(16)(inputs)
    norm = layers.BatchNormalization()
    x = layers.Dropout(0.3)(layers.ReLU()(norm(x)))
    x = layers.LayerNormalization()(layers.Dense(8)(x))
    model = tf.keras.Model(inputs, layers.Dense(3)(x))
    gamma, beta, _, _ = norm.get_weights()  # inference uses the moving statistics: not 0 and 1
    norm.set_weights([gamma * 1.5, beta + 0.1, _normal(16, seed=3), np.abs(_normal(16)) + 0.5])
    return model


def _unet() -> Any:
    inputs = tf.keras.Input((16, 16, 3))
    down = layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    deep = layers.Conv2D(16, 3, padding="same", activation="relu")(layers.MaxPool2D()(down))
    up = layers.Conv2DTranspose(8, 2, strides=2, padding="same")(deep)
    resized = layers.Conv2D(4, 1)(layers.UpSampling2D(2)(deep))
    merged = layers.Concatenate()([down, up, resized])
    return tf.keras.Model(inputs, layers.Conv2D(1, 1, activation="sigmoid")(merged))


def _separable() -> Any:
    inputs = tf.keras.Input((16, 16, 3))
    x = layers.SeparableConv2D(8, 3, padding="same", activation="relu")(inputs)
    x = layers.DepthwiseConv2D(3, strides=2)(x)
    x = layers.ReLU(6.0)(layers.BatchNormalization()(x))
    return tf.keras.Model(inputs, layers.Dense(4)(layers.GlobalAveragePooling2D()(x)))


def _lambdas() -> Any:
    inputs = tf.keras.Input(6)
    x = layers.Lambda(lambda t: tf.math.log1p(tf.abs(t)) * tf.sign(t))(inputs)
    x = layers.Dense(8)(x)
    x = tf.nn.l2_normalize(x, axis=-1) * 3.0  # tf ops on Keras tensors (TFOpLambda layers)
    peak = layers.Lambda(lambda t: tf.reduce_max(t, axis=-1, keepdims=True))(x)
    return tf.keras.Model(inputs, layers.Concatenate()([x, peak, tf.math.cumsum(x, axis=-1)]))


def _attention_layers() -> Any:
    query, value = tf.keras.Input((4, 8), name="query"), tf.keras.Input((6, 8), name="value")
    dot = layers.Attention(use_scale=True)([query, value])
    additive = layers.AdditiveAttention()([query, value])
    x = layers.GlobalAveragePooling1D()(layers.Concatenate()([dot, additive]))
    return tf.keras.Model({"query": query, "value": value}, layers.Dense(3)(x))


def _preprocessing() -> Any:
    norm = layers.Normalization()
    norm.adapt(np.random.default_rng(5).uniform(0, 1, size=(16, 12, 12, 3)).astype("float32"))
    inputs = tf.keras.Input((20, 24, 3))
    x = layers.Rescaling(1.0 / 255)(inputs)
    x = layers.Resizing(16, 16)(x)
    x = norm(layers.CenterCrop(12, 12)(x))
    x = layers.Conv2D(6, 3, activation="relu")(x)
    return tf.keras.Model(inputs, layers.Dense(2)(layers.GlobalAveragePooling2D()(x)))


def _pixels(batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, size=(batch, 20, 24, 3)).astype("float32")


def _multimodal() -> Any:
    image = tf.keras.Input((8, 8, 3), name="image")
    table = tf.keras.Input((5,), name="table")
    tokens = tf.keras.Input((7,), dtype="int32", name="tokens")
    a = layers.GlobalAveragePooling2D()(layers.Conv2D(4, 3)(image))
    b = layers.Dense(4, activation="relu")(table)
    c = layers.Flatten()(layers.Embedding(20, 2)(tokens))
    merged = layers.Concatenate()([a, b, c])
    return tf.keras.Model([image, table, tokens], layers.Dense(1)(merged))


def _multimodal_inputs(batch: int, seed: int) -> list[np.ndarray]:
    return [_normal(batch, 8, 8, 3, seed=seed), _normal(batch, 5, seed=seed + 1),
            _ints(0, 20, batch, 7, seed=seed)]


# --- hand-written tf.Module signatures ---------------------------------------------------------


class _Scan(tf.Module):  # type: ignore[misc]
    """A running sum over time with tf.scan, and a tf.foldl over the features."""

    def __init__(self) -> None:
        super().__init__()
        self.w = _weights(3, 3)

    @tf.function(input_signature=[tf.TensorSpec([None, 5, 3], tf.float32)])  # type: ignore[misc]
    def __call__(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        steps = tf.transpose(x, [1, 0, 2])
        running = tf.scan(lambda acc, step: tf.tanh(acc @ self.w + step), steps)
        total = tf.foldl(lambda acc, step: acc + step * 0.5, steps)
        return {"running": tf.transpose(running, [1, 0, 2]), "total": total}


class _TensorArrayLoop(tf.Module):  # type: ignore[misc]
    """A hand-written RNN over however many steps the input has (TensorArray, tf.range)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = _weights(4, 4)
        self.u = _weights(4, 4, seed=2)

    @tf.function(input_signature=[tf.TensorSpec([None, None, 4], tf.float32)])  # type: ignore[misc]
    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        steps = tf.shape(x)[1]
        outputs = tf.TensorArray(tf.float32, size=steps)
        h = tf.zeros_like(x[:, 0])
        for t in tf.range(steps):
            h = tf.tanh(h @ self.w + x[:, t] @ self.u)
            outputs = outputs.write(t, h)
        return tf.transpose(outputs.stack(), [1, 0, 2])


class _GraphReadout(tf.Module):  # type: ignore[misc]
    """A GNN readout: node features (the batch axis is nodes) summed per graph."""

    def __init__(self) -> None:
        super().__init__()
        self.w = _weights(4, 6)

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="nodes"),
                                  tf.TensorSpec([None], tf.int32, name="segments")])  # type: ignore[misc]
    def __call__(self, nodes: tf.Tensor, segments: tf.Tensor) -> dict[str, tf.Tensor]:
        hidden = tf.nn.relu(nodes @ self.w)
        pooled = tf.math.unsorted_segment_sum(hidden, segments, num_segments=3)
        counts = tf.math.unsorted_segment_sum(tf.ones_like(segments), segments, num_segments=3)
        return {"pooled": pooled, "counts": counts, "hidden": hidden}


def _graph_inputs(batch: int, seed: int) -> dict[str, np.ndarray]:
    return {"nodes": _normal(batch, 4, seed=seed), "segments": _ints(0, 3, batch, seed=seed)}


class _GatherScatter(tf.Module):  # type: ignore[misc]
    """Embedding gathers, a batched gather_nd and a scatter_nd back into the input's shape."""

    def __init__(self) -> None:
        super().__init__()
        self.table = _weights(10, 4)

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x"),
                                  tf.TensorSpec([None, 2], tf.int32, name="ids")])  # type: ignore[misc]
    def __call__(self, x: tf.Tensor, ids: tf.Tensor) -> dict[str, tf.Tensor]:
        embedded = tf.reduce_sum(tf.gather(self.table, ids), axis=1)
        picked = tf.gather_nd(x, tf.expand_dims(ids[:, :1] % 4, -1), batch_dims=1)
        rows = tf.range(tf.shape(x)[0])
        where = tf.stack([rows, ids[:, 1] % 4], axis=1)
        scattered = tf.scatter_nd(where, picked[:, 0] + 1.0, tf.shape(x))
        return {"embedded": embedded + x, "scattered": scattered}


def _gather_inputs(batch: int, seed: int) -> dict[str, np.ndarray]:
    return {"x": _normal(batch, 4, seed=seed), "ids": _ints(0, 10, batch, 2, seed=seed)}


class _Selection(tf.Module):  # type: ignore[misc]
    """tf.where(cond, x, y), clip_by_value, top_k, argmax → one_hot: float, int and bool outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.w = _weights(6, 6)

    @tf.function(input_signature=[tf.TensorSpec([None, 6], tf.float32)])  # type: ignore[misc]
    def __call__(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        logits = x @ self.w
        chosen = tf.where(logits > 0.0, tf.clip_by_value(logits, 0.0, 1.5), logits * 0.1)
        values, indices = tf.math.top_k(logits, k=3)
        best = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return {"chosen": chosen, "top_values": values, "top_indices": indices,
                "one_hot": tf.one_hot(best, 6), "is_best_positive": tf.reduce_max(logits, -1) > 0}


class _EinsumAttention(tf.Module):  # type: ignore[misc]
    """Self-attention written with einsum and batched matmul."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = _weights(8, 3, 8)

    @tf.function(input_signature=[tf.TensorSpec([None, 5, 8], tf.float32)])  # type: ignore[misc]
    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        q, k, v = tf.unstack(tf.einsum("bsd,dke->kbse", x, self.qkv))
        scores = tf.nn.softmax(tf.einsum("bqd,bkd->bqk", q, k) / np.sqrt(8.0).astype("float32"))
        return tf.matmul(scores, v) + x


class _LinearAlgebra(tf.Module):  # type: ignore[misc]
    """Cholesky of SPD matrices built from the input, a triangular solve and a log-determinant."""

    @tf.function(input_signature=[tf.TensorSpec([None, 4, 4], tf.float64)])  # type: ignore[misc]
    def __call__(self, a: tf.Tensor) -> dict[str, tf.Tensor]:
        spd = tf.matmul(a, a, transpose_b=True) + 4.0 * tf.eye(4, dtype=tf.float64)
        chol = tf.linalg.cholesky(spd)
        solved = tf.linalg.triangular_solve(chol, tf.ones_like(a[:, :, :1]), lower=True)
        return {"chol": chol, "solved": solved, "logdet": tf.linalg.logdet(spd)}


class _Spectrum(tf.Module):  # type: ignore[misc]
    """Power spectrum of a signal with tf.signal.rfft (complex inside and out)."""

    @tf.function(input_signature=[tf.TensorSpec([None, 16], tf.float32)])  # type: ignore[misc]
    def __call__(self, signal: tf.Tensor) -> dict[str, tf.Tensor]:
        spectrum = tf.signal.rfft(signal)
        return {"power": tf.math.log1p(tf.abs(spectrum) ** 2), "spectrum": spectrum}


class _IntegerLogic(tf.Module):  # type: ignore[misc]
    """int32 arithmetic and bool logic, no float in sight."""

    @tf.function(input_signature=[tf.TensorSpec([None, 5], tf.int32, name="a"),
                                  tf.TensorSpec([None, 5], tf.int32, name="b")])  # type: ignore[misc]
    def __call__(self, a: tf.Tensor, b: tf.Tensor) -> dict[str, tf.Tensor]:
        mixed = (a * 3 + b) // 2 % 7 - tf.reduce_max(b, axis=1, keepdims=True)
        flags = tf.math.logical_xor(a > b, tf.math.logical_and(a % 2 == 0, b >= 3))
        return {"mixed": mixed, "flags": flags, "count": tf.reduce_sum(tf.cast(flags, tf.int32), 1)}


def _int_pair(batch: int, seed: int) -> dict[str, np.ndarray]:
    return {"a": _ints(-9, 9, batch, 5, seed=seed), "b": _ints(0, 6, batch, 5, seed=seed + 1)}


class _Temperature(tf.Module):  # type: ignore[misc]
    """A batched input next to a scalar one (a softmax temperature, as users pass it)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = _weights(4, 5)

    @tf.function(input_signature=[tf.TensorSpec([], tf.float32, name="temperature"),
                                  tf.TensorSpec([None, 4], tf.float32, name="x")])  # type: ignore[misc]
    def __call__(self, temperature: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
        return tf.nn.softmax(x @ self.w / temperature)


def _temperature_inputs(batch: int, seed: int) -> dict[str, np.ndarray]:
    return {"temperature": np.float32(0.7), "x": _normal(batch, 4, seed=seed)}


class _DataDependentShapes(tf.Module):  # type: ignore[misc]
    """boolean_mask, unique and where(cond): outputs whose size depends on the values."""

    def __init__(self) -> None:
        super().__init__()
        self.w = _weights(4, 4)

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


class _Prototypes(tf.Module):  # type: ignore[misc]
    """A batch next to a side input of a fixed shape (class prototypes the caller passes)."""

    @tf.function(input_signature=[tf.TensorSpec([5, 4], tf.float32, name="prototypes"),
                                  tf.TensorSpec([None, 4], tf.float32, name="x")])  # type: ignore[misc]
    def __call__(self, prototypes: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
        distances = tf.reduce_sum(tf.square(x[:, None, :] - prototypes[None]), axis=-1)
        return tf.nn.softmax(-distances)


def _prototype_inputs(batch: int, seed: int) -> dict[str, np.ndarray]:
    return {"prototypes": _normal(5, 4, seed=7), "x": _normal(batch, 4, seed=seed)}


def _data_inputs(batch: int, seed: int) -> dict[str, np.ndarray]:
    return {"x": _normal(batch, 4, seed=seed), "ids": _ints(0, 4, batch, seed=seed)}


# --- the cases ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    """A model, example inputs at two batch sizes (``inputs(batch, seed)``) and how to check it."""

    build: Callable[[], Any]
    inputs: Callable[[int, int], Any]
    in_memory: bool = True
    fresh_process: bool = False
    trace_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    slow: bool = False


def _shaped(*shape: int) -> Callable[[int, int], np.ndarray]:
    return lambda batch, seed: _normal(batch, *shape, seed=seed)


#: large applications (each 1-2 minutes here: slow): the service's leg only, every supported
#: op compiled (nothing timed)
_APPLICATION = {"in_memory": False, "trace_kwargs": {"placement": "all"}, "slow": True}

CASES: dict[str, Case] = {
    "densenet121": Case(_application("DenseNet121"), _shaped(32, 32, 3), **_APPLICATION),
    "efficientnet_v2_b0": Case(_application("EfficientNetV2B0"), _shaped(32, 32, 3),
                               **_APPLICATION),
    "convnext_tiny": Case(_application("ConvNeXtTiny"), _shaped(32, 32, 3), **_APPLICATION),
    "conv1d_maxpool1d": Case(_conv1d, _shaped(20, 3)),
    "embedding_mask_zero_mean": Case(_embedding_mean, _padded_ids, fresh_process=True),
    "time_distributed_conv_lstm": Case(_video, _shaped(4, 8, 8, 3)),
    "lstm_return_state": Case(_lstm_states, _shaped(6, 4)),
    "stacked_gru_dropout": Case(_stacked_gru, _shaped(6, 4)),
    "batch_norm_dropout_layer_norm": Case(_batch_norm_mlp, _shaped(10)),
    "unet_transpose_upsampling": Case(_unet, _shaped(16, 16, 3)),
    "separable_depthwise": Case(_separable, _shaped(16, 16, 3)),
    "lambda_and_tf_op_layers": Case(_lambdas, _shaped(6)),
    "attention_additive_attention": Case(
        _attention_layers,
        lambda b, s: {"query": _normal(b, 4, 8, seed=s), "value": _normal(b, 6, 8, seed=s + 1)}),
    "preprocessing_layers": Case(_preprocessing, _pixels),
    "three_inputs_three_shapes": Case(_multimodal, _multimodal_inputs),
    "scan_and_foldl": Case(_Scan, _shaped(5, 3)),
    "tensor_array_loop": Case(_TensorArrayLoop, _shaped(5, 4), fresh_process=True),
    "unsorted_segment_sum_readout": Case(_GraphReadout, _graph_inputs),
    "gather_gather_nd_scatter_nd": Case(_GatherScatter, _gather_inputs),
    "where_clip_top_k_one_hot": Case(_Selection, _shaped(6)),
    "einsum_attention": Case(_EinsumAttention, _shaped(5, 8)),
    "cholesky_float64": Case(_LinearAlgebra,
                             lambda b, s: _normal(b, 4, 4, seed=s).astype("float64")),
    "rfft_complex_output": Case(_Spectrum, _shaped(16)),
    "int32_and_bool_logic": Case(_IntegerLogic, _int_pair),
    "scalar_next_to_batched": Case(_Temperature, _temperature_inputs, fresh_process=True),
    "fixed_side_input": Case(_Prototypes, _prototype_inputs),
    "boolean_mask_unique_where": Case(_DataDependentShapes, _data_inputs),
}




@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=[pytest.mark.slow] * c.slow) for n, c in CASES.items()])
def test_unseen_model_round_trips(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    model = case.build()
    result = check_roundtrip(model, case.inputs(2, 0), case.inputs(3, 1), tmp_path,
                             in_memory=case.in_memory, fresh_process=case.fresh_process,
                             trace_kwargs=case.trace_kwargs)
    reports = [result.saved_report] + ([result.in_memory_report] if case.in_memory else [])
    for report in reports:
        assert report["numerical_check"]["within_tolerance"], report["numerical_check"]
        assert report["batch_mode"] == "dynamic", report["batch_mode"]
