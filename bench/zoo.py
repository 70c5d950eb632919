"""The model zoo shared by ``tests/tracer/test_zoo.py`` and ``bench/trace_zoo.py``.

Every model is built in code with random weights (``weights=None``: the machine has no internet
besides package registries), seeded so that two builds give the same weights. All are Keras 2
(``tf_keras``) models, as tensorflow-neuron users have.

Models: a 3-layer MLP, MobileNetV2 and ResNet50 from ``tf.keras.applications``, a two-layer LSTM
classifier, and a small BERT-like encoder (token + position embeddings, two transformer blocks with
multi-head attention, layer norm and a GELU feed-forward, dict outputs).

``EXTRA_ZOO`` holds the models of issue 9 that a benchmark can time (a GRU, a text classifier
that starts with ``TextVectorization``, one transformer block, a float16 MLP, a mixed-precision
CNN and an NCHW CNN); ``BENCH_ZOO`` is both. The tracer tests of those models live with the tests
of the features they need.
"""

from __future__ import annotations

import os

# Keras 2 as tf.keras, as tensorflow-neuron users have it; must be set before TensorFlow loads.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

__all__ = [
    "BENCH_ZOO",
    "EXTRA_ZOO",
    "ZOO",
    "ZooModel",
    "build_bert_encoder",
    "build_float16_mlp",
    "build_gru",
    "build_lstm",
    "build_mixed_precision_cnn",
    "build_mlp",
    "build_mobilenet_v2",
    "build_nchw_cnn",
    "build_resnet50",
    "build_text_classifier",
    "build_transformer_block",
    "compare_outputs",
    "to_numpy_list",
]

BERT_VOCAB = 2000
BERT_SEQ = 64
LSTM_STEPS = 32
LSTM_FEATURES = 32


TEXT_SEQ = 32
TEXT_WORDS = tuple(f"w{i}" for i in range(400))
IMAGE = 32


@dataclasses.dataclass(frozen=True)
class ZooModel:
    """One zoo entry: how to build it and how to make inputs for it.

    Attributes:
        name: Short name used on the command line and in test ids.
        build: Builds the model with seeded random weights.
        make_inputs: ``(batch, seed) -> numpy array`` of example inputs.
        slow: True when tracing and saving it needs minutes and gigabytes (ResNet50).
    """

    name: str
    build: Callable[[], keras.Model]
    make_inputs: Callable[[int, int], np.ndarray]
    slow: bool = False


def build_mlp(seed: int = 0) -> keras.Model:
    """A 3-layer MLP on 784 features (MNIST-sized), ReLU, 10 logits."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(784,), name="features")
    x = keras.layers.Dense(512, activation="relu")(inputs)
    x = keras.layers.Dense(512, activation="relu")(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs, name="mlp")


def build_mobilenet_v2(seed: int = 0) -> keras.Model:
    """MobileNetV2 from tf.keras.applications, 224x224, random weights, logits out.

    Logits rather than softmax: with random weights the softmax is nearly uniform (~1e-3
    everywhere), which would make output comparisons blind to errors inside the network.
    """
    keras.utils.set_random_seed(seed)
    return keras.applications.MobileNetV2(
        weights=None, input_shape=(224, 224, 3), classifier_activation=None
    )


def build_resnet50(seed: int = 0) -> keras.Model:
    """ResNet50 from tf.keras.applications, 224x224, random weights, logits out (see above)."""
    keras.utils.set_random_seed(seed)
    return keras.applications.ResNet50(
        weights=None, input_shape=(224, 224, 3), classifier_activation=None
    )


def build_lstm(seed: int = 0) -> keras.Model:
    """Two stacked LSTMs (128 units) over 32 steps of 32 features, then a softmax over 10."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(LSTM_STEPS, LSTM_FEATURES), name="sequence")
    x = keras.layers.LSTM(128, return_sequences=True)(inputs)
    x = keras.layers.LSTM(128)(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="lstm")


def _transformer_block(x: Any, index: int, hidden: int, heads: int, ffn: int) -> Any:
    """Post-norm transformer encoder block, as in BERT."""
    attention = keras.layers.MultiHeadAttention(
        num_heads=heads, key_dim=hidden // heads, name=f"block{index}_attention"
    )(x, x)
    x = keras.layers.LayerNormalization(epsilon=1e-12, name=f"block{index}_attention_norm")(
        keras.layers.Add()([x, attention])
    )
    h = keras.layers.Dense(ffn, activation="gelu", name=f"block{index}_ffn_in")(x)
    h = keras.layers.Dense(hidden, name=f"block{index}_ffn_out")(h)
    return keras.layers.LayerNormalization(epsilon=1e-12, name=f"block{index}_ffn_norm")(
        keras.layers.Add()([x, h])
    )


class _PositionEmbedding(keras.layers.Layer):
    """Learned position embeddings added to the token embeddings."""

    def __init__(self, length: int, hidden: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.length, self.hidden = length, hidden

    def build(self, input_shape: Any) -> None:
        self.table = self.add_weight(
            name="table", shape=(self.length, self.hidden), initializer="glorot_uniform"
        )

    def call(self, x: Any) -> Any:
        return x + self.table[None, : tf.shape(x)[1], :]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "length": self.length, "hidden": self.hidden}


class _FirstToken(keras.layers.Layer):
    """The first token's vector (BERT's [CLS] position), input to the pooler."""

    def call(self, x: Any) -> Any:
        return x[:, 0, :]


def build_bert_encoder(
    seed: int = 0, hidden: int = 128, heads: int = 4, ffn: int = 512, blocks: int = 2
) -> keras.Model:
    """A small BERT-like encoder over int32 token ids, with dict outputs.

    Returns:
        A model mapping ``(batch, 64)`` token ids to ``{"sequence_output": (batch, 64, hidden),
        "pooled_output": (batch, hidden)}`` (pooled = tanh dense on the first token).
    """
    keras.utils.set_random_seed(seed)
    ids = keras.Input(shape=(BERT_SEQ,), dtype="int32", name="input_ids")
    x = keras.layers.Embedding(BERT_VOCAB, hidden, name="token_embedding")(ids)
    x = _PositionEmbedding(BERT_SEQ, hidden, name="position_embedding")(x)
    x = keras.layers.LayerNormalization(epsilon=1e-12, name="embedding_norm")(x)
    for index in range(blocks):
        x = _transformer_block(x, index, hidden, heads, ffn)
    first = _FirstToken(name="first_token")(x)
    pooled = keras.layers.Dense(hidden, activation="tanh", name="pooler")(first)
    return keras.Model(ids, {"sequence_output": x, "pooled_output": pooled}, name="bert_like")


def build_gru(seed: int = 0) -> keras.Model:
    """A GRU (128 units) over 32 steps of 32 features, then 10 logits."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(LSTM_STEPS, LSTM_FEATURES), name="sequence")
    x = keras.layers.GRU(128)(inputs)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name="gru")


def build_text_classifier(seed: int = 0) -> keras.Model:
    """``TextVectorization`` (a lookup table, stays on CPU) → embedding → Conv1D → 2 logits."""
    keras.utils.set_random_seed(seed)
    vectorize = keras.layers.TextVectorization(
        max_tokens=len(TEXT_WORDS) + 2, output_sequence_length=TEXT_SEQ, name="vectorize"
    )
    vectorize.adapt(tf.constant([" ".join(TEXT_WORDS)]))
    text = keras.Input(shape=(), dtype=tf.string, name="text")
    x = keras.layers.Embedding(len(TEXT_WORDS) + 2, 64)(vectorize(text))
    x = keras.layers.Conv1D(128, 3, activation="relu")(x)
    x = keras.layers.GlobalMaxPooling1D()(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    return keras.Model(text, keras.layers.Dense(2, name="logits")(x), name="text")


def build_transformer_block(seed: int = 0) -> keras.Model:
    """One post-norm transformer encoder block over (64, 128) float features."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(BERT_SEQ, 128), name="features")
    outputs = _transformer_block(inputs, 0, hidden=128, heads=4, ffn=512)
    return keras.Model(inputs, outputs, name="transformer_block")


def build_float16_mlp(seed: int = 0) -> keras.Model:
    """A 3-layer MLP whose inputs, weights and outputs are all float16."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(784,), dtype="float16", name="features")
    x = keras.layers.Dense(512, activation="relu", dtype="float16")(inputs)
    x = keras.layers.Dense(512, activation="relu", dtype="float16")(x)
    outputs = keras.layers.Dense(10, dtype="float16", name="logits")(x)
    return keras.Model(inputs, outputs, name="float16_mlp")


def build_mixed_precision_cnn(seed: int = 0) -> keras.Model:
    """A small CNN under the ``mixed_float16`` policy (float16 compute, float32 logits)."""
    keras.utils.set_random_seed(seed)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inputs = keras.Input(shape=(IMAGE, IMAGE, 3), name="image")
        x = keras.layers.Conv2D(32, 3, activation="relu")(inputs)
        x = keras.layers.Conv2D(64, 3, strides=2, activation="relu")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        outputs = keras.layers.Dense(10, dtype="float32", name="logits")(x)
        return keras.Model(inputs, outputs, name="mixed_precision_cnn")
    finally:
        keras.mixed_precision.set_global_policy(previous)


def build_nchw_cnn(seed: int = 0) -> keras.Model:
    """A small CNN in NCHW layout (``channels_first``): ``Conv2D`` with ``data_format=NCHW``.

    TensorFlow's CPU kernels run NCHW convolutions only through oneDNN (on by default on x86);
    XLA runs them anywhere.
    """
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(3, IMAGE, IMAGE), name="image")
    x = keras.layers.Conv2D(32, 3, activation="relu", data_format="channels_first")(inputs)
    x = keras.layers.Conv2D(64, 3, strides=2, activation="relu", data_format="channels_first")(x)
    x = keras.layers.GlobalAveragePooling2D(data_format="channels_first")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name="nchw_cnn")


def _floats(shape: tuple[int, ...]) -> Callable[[int, int], np.ndarray]:
    def make(batch: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return rng.random((batch, *shape), dtype=np.float32)

    return make


def _float16s(shape: tuple[int, ...]) -> Callable[[int, int], np.ndarray]:
    def make(batch: int, seed: int) -> np.ndarray:
        return _floats(shape)(batch, seed).astype(np.float16)

    return make


def _sentences(batch: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    words = rng.choice(np.array(TEXT_WORDS), size=(batch, TEXT_SEQ))
    return np.array([" ".join(row).encode() for row in words], dtype=object)


def _token_ids(batch: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, BERT_VOCAB, size=(batch, BERT_SEQ), dtype=np.int32)


ZOO: Mapping[str, ZooModel] = {
    "mlp": ZooModel("mlp", build_mlp, _floats((784,))),
    "mobilenet_v2": ZooModel("mobilenet_v2", build_mobilenet_v2, _floats((224, 224, 3))),
    "resnet50": ZooModel("resnet50", build_resnet50, _floats((224, 224, 3)), slow=True),
    "lstm": ZooModel("lstm", build_lstm, _floats((LSTM_STEPS, LSTM_FEATURES))),
    "bert": ZooModel("bert", build_bert_encoder, _token_ids),
}
EXTRA_ZOO: Mapping[str, ZooModel] = {
    "gru": ZooModel("gru", build_gru, _floats((LSTM_STEPS, LSTM_FEATURES))),
    "text": ZooModel("text", build_text_classifier, _sentences),
    "transformer": ZooModel("transformer", build_transformer_block, _floats((BERT_SEQ, 128))),
    "float16_mlp": ZooModel("float16_mlp", build_float16_mlp, _float16s((784,))),
    "mixed_cnn": ZooModel("mixed_cnn", build_mixed_precision_cnn, _floats((IMAGE, IMAGE, 3))),
    "nchw_cnn": ZooModel("nchw_cnn", build_nchw_cnn, _floats((3, IMAGE, IMAGE))),
}
BENCH_ZOO: Mapping[str, ZooModel] = {**ZOO, **EXTRA_ZOO}


def to_numpy_list(outputs: Any) -> list[np.ndarray]:
    """Flatten model outputs (tensor, list/tuple, or dict by sorted key) to NumPy arrays."""
    if isinstance(outputs, Mapping):
        return [np.asarray(outputs[key]) for key in sorted(outputs)]
    if isinstance(outputs, Sequence) and not isinstance(outputs, (str, bytes)):
        return [np.asarray(item) for item in outputs]
    return [np.asarray(outputs)]


def compare_outputs(expected: Any, actual: Any) -> tuple[float, float]:
    """Compare two output structures element-wise.

    Args:
        expected: The original model's outputs.
        actual: The traced (or reloaded) model's outputs, with the same structure.

    Returns:
        ``(max_abs_diff, max_abs_output)`` over all outputs; the zoo's criterion is
        ``max_abs_diff <= 1e-3 * max_abs_output``.

    Raises:
        ValueError: The structures, dict keys or shapes differ.
    """
    if isinstance(expected, Mapping) != isinstance(actual, Mapping):
        raise ValueError(f"output structures differ: {type(expected)} vs {type(actual)}")
    if isinstance(expected, Mapping) and set(expected) != set(actual):
        raise ValueError(f"output keys differ: {sorted(expected)} vs {sorted(actual)}")
    left, right = to_numpy_list(expected), to_numpy_list(actual)
    if len(left) != len(right):
        raise ValueError(f"{len(left)} outputs expected, got {len(right)}")
    diff, magnitude = 0.0, 0.0
    for one, other in zip(left, right, strict=True):
        if one.shape != other.shape:
            raise ValueError(f"output shapes differ: {one.shape} vs {other.shape}")
        diff = max(diff, float(np.max(np.abs(one.astype(np.float64) - other.astype(np.float64)))))
        magnitude = max(magnitude, float(np.max(np.abs(one))))
    return diff, magnitude
