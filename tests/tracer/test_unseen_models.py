"""Models users have that the zoo did not cover, each on the user's path (``check_roundtrip``).

Keras applications and layers built as their users build them (``weights=None`` at small input
sizes), and hand-written ``tf.Module`` signatures using the ops such modules use: loops over
time, segment sums, gathers and scatters, top-k, linear algebra, FFTs, integer and bool logic,
scalar inputs next to batched ones, and ops whose output size depends on the data (these cannot be
compiled at an unknown size; they stay on CPU and must still work). Each is traced in memory and
through save → ``tf.saved_model.load`` → trace the serving signature → save → reload → serve at
another batch, and must match the original there (tolerances of ``tests/tracer/roundtrip.py``).
The hand-written modules live in ``tests/tracer/unseen_modules.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf
from tests.tracer import unseen_modules as modules
from tests.tracer.unseen_cases import Case, case_marks, check_case, shaped
from tests.tracer.unseen_modules import ints, normal

layers = tf.keras.layers


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
    ids = ints(1, 30, batch, 7, seed=seed)
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
    norm.set_weights([gamma * 1.5, beta + 0.1, normal(16, seed=3), np.abs(normal(16)) + 0.5])
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
    return [normal(batch, 8, 8, 3, seed=seed), normal(batch, 5, seed=seed + 1),
            ints(0, 20, batch, 7, seed=seed)]


def _augmented() -> Any:
    """Data augmentation inside the model, as Keras tutorials put it (inactive at inference)."""
    return tf.keras.Sequential([
        tf.keras.Input((16, 16, 3)),
        layers.RandomFlip("horizontal"),
        layers.RandomRotation(0.1),
        layers.RandomZoom(0.1),
        layers.Conv2D(4, 3, activation="relu"),
        layers.GlobalAveragePooling2D(),
        layers.Dense(2),
    ])


def _tabular() -> Any:
    """Bucketized and multi-hot features next to a normalised numeric column."""
    age, tags, income = (tf.keras.Input((1,), name="age"), tf.keras.Input((3,), dtype="int32",
                         name="tags"), tf.keras.Input((1,), name="income"))
    buckets = layers.Discretization(bin_boundaries=[18.0, 30.0, 50.0])(age)
    norm = layers.Normalization()
    norm.adapt(np.array([[10.0], [20.0], [55.0], [80.0]], "float32"))
    features = layers.Concatenate()([
        layers.CategoryEncoding(4, output_mode="one_hot")(buckets),
        layers.CategoryEncoding(10, output_mode="multi_hot")(tags),
        norm(income),
    ])
    hidden = layers.Dense(8, activation="relu")(features)
    return tf.keras.Model({"age": age, "tags": tags, "income": income}, layers.Dense(1)(hidden))


def _tabular_inputs(batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"age": rng.uniform(5, 70, (batch, 1)).astype("float32"),
            "income": rng.uniform(0, 90, (batch, 1)).astype("float32"),
            "tags": ints(0, 10, batch, 3, seed=seed)}


def _causal_decoder() -> Any:
    """A decoder block: token ids and a padding mask in, causal self-attention with both masks."""
    ids, mask = tf.keras.Input((8,), dtype="int32", name="ids"), tf.keras.Input((8,), name="mask")
    x = layers.Embedding(50, 16)(ids)
    padding = tf.cast(mask[:, None, :], "bool")
    attended = layers.MultiHeadAttention(2, 8)(x, x, attention_mask=padding, use_causal_mask=True)
    x = layers.LayerNormalization()(x + attended)
    return tf.keras.Model({"ids": ids, "mask": mask}, layers.Dense(50)(x))


def _decoder_inputs(batch: int, seed: int) -> dict[str, np.ndarray]:
    mask = np.ones((batch, 8), "float32")
    mask[0, 5:] = 0.0
    return {"ids": ints(1, 50, batch, 8, seed=seed), "mask": mask}


# --- the cases ---------------------------------------------------------------------------------


#: large applications (each 1-2 minutes here: slow): the service's leg only, every supported
#: op compiled (nothing timed)
_APPLICATION = {"in_memory": False, "trace_kwargs": {"placement": "all"}, "slow": True}

CASES: dict[str, Case] = {
    "densenet121": Case(_application("DenseNet121"), shaped(32, 32, 3), **_APPLICATION),
    "efficientnet_v2_b0": Case(_application("EfficientNetV2B0"), shaped(32, 32, 3),
                               **_APPLICATION),
    "convnext_tiny": Case(_application("ConvNeXtTiny"), shaped(32, 32, 3), **_APPLICATION),
    "conv1d_maxpool1d": Case(_conv1d, shaped(20, 3)),
    "embedding_mask_zero_mean": Case(_embedding_mean, _padded_ids, fresh_process=True),
    "time_distributed_conv_lstm": Case(_video, shaped(4, 8, 8, 3)),
    "lstm_return_state": Case(_lstm_states, shaped(6, 4)),
    "stacked_gru_dropout": Case(_stacked_gru, shaped(6, 4)),
    "batch_norm_dropout_layer_norm": Case(_batch_norm_mlp, shaped(10)),
    "unet_transpose_upsampling": Case(_unet, shaped(16, 16, 3)),
    "separable_depthwise": Case(_separable, shaped(16, 16, 3)),
    "lambda_and_tf_op_layers": Case(_lambdas, shaped(6)),
    "attention_additive_attention": Case(
        _attention_layers,
        lambda b, s: {"query": normal(b, 4, 8, seed=s), "value": normal(b, 6, 8, seed=s + 1)}),
    "preprocessing_layers": Case(_preprocessing, _pixels),
    "three_inputs_three_shapes": Case(_multimodal, _multimodal_inputs),
    "augmentation_layers": Case(_augmented, shaped(16, 16, 3)),
    "discretization_category_encoding": Case(_tabular, _tabular_inputs),
    "causal_decoder_padding_mask": Case(_causal_decoder, _decoder_inputs),
    "scan_and_foldl": Case(modules.Scan, shaped(5, 3)),
    "tensor_array_loop": Case(modules.TensorArrayLoop, shaped(5, 4), fresh_process=True),
    "unsorted_segment_sum_readout": Case(modules.GraphReadout, modules.graph_inputs),
    "gather_gather_nd_scatter_nd": Case(modules.GatherScatter, modules.gather_inputs),
    "where_clip_top_k_one_hot": Case(modules.Selection, shaped(6)),
    "einsum_attention": Case(modules.EinsumAttention, shaped(5, 8)),
    "cholesky_float64": Case(modules.LinearAlgebra,
                             lambda b, s: normal(b, 4, 4, seed=s).astype("float64")),
    "rfft_complex_output": Case(modules.Spectrum, shaped(16)),
    "int32_and_bool_logic": Case(modules.IntegerLogic, modules.int_pair),
    "scalar_next_to_batched": Case(modules.Temperature, modules.temperature_inputs,
                                   fresh_process=True),
    "fixed_side_input": Case(modules.Prototypes, modules.prototype_inputs),
    "boolean_mask_unique_where": Case(modules.DataDependentShapes, modules.data_inputs),
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=case_marks(c)) for n, c in CASES.items()])
def test_unseen_model_round_trips(name: str, tmp_path: Path) -> None:
    check_case(CASES[name], tmp_path)
