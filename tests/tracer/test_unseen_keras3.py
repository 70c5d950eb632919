"""Keras 3 models (``import keras``), built and saved as TensorFlow 2.16+ users do.

Keras 3 is the ``keras`` package whatever ``TF_USE_LEGACY_KERAS`` says (that variable only picks
what ``tf.keras`` is), so these models are built in-process next to the Keras 2 probes. Each
case runs the user's path of ``tests/tracer/roundtrip.py``: ``trace(model, x)`` in memory, then
``model.export(dir)`` (a SavedModel with ``serve`` and ``serving_default`` signatures) →
``tf.saved_model.load`` → trace ``signatures["serving_default"]`` with a dict of example inputs
→ save → reload → serve at another batch, compared to the original. A few cases save with
``tf.saved_model.save(model, dir)`` instead, the other way Keras 3 users write a SavedModel.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf
from tests.tracer.roundtrip import RTOL_FLOAT16
from tests.tracer.unseen_cases import Case, case_marks, check_case, shaped
from tests.tracer.unseen_modules import ints, normal

layers = keras.layers


def export(model: Any, directory: Path) -> Path:
    """Save as Keras 3 documents it for serving: ``model.export`` (TF SavedModel format)."""
    model.export(str(directory), verbose=False)
    return directory


def export_for_inference(model: Any, directory: Path) -> Path:
    """Export a ``serve`` endpoint calling ``model(x, training=False)``, as the tracer's error
    advises for a model whose augmentation layers ``model.export`` would leave active."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    (tensor,) = model.inputs
    spec = keras.InputSpec(shape=tensor.shape, dtype=tensor.dtype)
    archive.add_endpoint("serve", lambda x: model(x, training=False), input_signature=[spec])
    archive.write_out(str(directory), verbose=False)
    return directory


def saved_model_save(model: Any, directory: Path) -> Path:
    """Save with ``tf.saved_model.save``, as users of the TensorFlow guides do."""
    tf.saved_model.save(model, str(directory))
    return directory


def test_keras_is_keras_3() -> None:
    """The premise: ``import keras`` is Keras 3 here, while ``tf.keras`` is Keras 2."""
    assert keras.__version__.startswith("3."), keras.__version__
    assert not type(keras.Model).__module__.startswith("tf_keras")


# --- models -------------------------------------------------------------------------------------


def _application(name: str, **kwargs: Any) -> Any:
    def build() -> Any:
        keras.utils.set_random_seed(0)
        factory = getattr(keras.applications, name)
        return factory(weights=None, input_shape=(32, 32, 3), classes=10, **kwargs)

    return build


def _recurrent() -> Any:
    inputs = keras.Input((6, 4), name="steps")
    sequence, hidden, cell = layers.LSTM(8, return_sequences=True, return_state=True)(inputs)
    x = layers.Bidirectional(layers.GRU(5, return_sequences=True))(sequence)
    x = layers.Bidirectional(layers.LSTM(3), merge_mode="ave")(x)
    x = layers.Concatenate()([layers.GRU(4)(sequence), x])
    return keras.Model(inputs, [layers.Dense(2)(x), hidden, cell])


def _masked_recurrent() -> Any:
    """Keras 3 masks: padding ids (0) skipped by the LSTM over variable-length sequences."""
    ids = keras.Input((None,), dtype="int32", name="ids")
    x = layers.Embedding(30, 8, mask_zero=True)(ids)
    return keras.Model(ids, layers.Dense(2)(layers.LSTM(6)(x)))


def _padded_ids(batch: int, seed: int) -> np.ndarray:
    ids = ints(1, 30, batch, 7, seed=seed)
    ids[0, 4:] = 0
    return ids


class KerasOpsLayer(layers.Layer):  # type: ignore[misc]
    """A custom layer written with ``keras.ops`` (Keras 3's backend-neutral ops)."""

    def build(self, input_shape: Any) -> None:
        self.w = self.add_weight(shape=(input_shape[-1], input_shape[-1]),
                                 initializer="glorot_uniform")

    def call(self, x: Any) -> Any:
        top, _ = keras.ops.top_k(x, 2)
        gate = keras.ops.sigmoid(keras.ops.einsum("bi,ij->bj", x, self.w))
        return keras.ops.concatenate(
            [gate * x, top, keras.ops.cumsum(x, axis=-1), keras.ops.sort(x)], axis=-1)


def _keras_ops() -> Any:
    inputs = keras.Input((6,))
    return keras.Model(inputs, layers.Dense(3)(KerasOpsLayer()(inputs)))


def _transformer_block() -> Any:
    inputs = keras.Input((8, 16), name="tokens")
    attended = layers.MultiHeadAttention(num_heads=2, key_dim=8)(inputs, inputs)
    x = layers.LayerNormalization(epsilon=1e-6)(inputs + layers.Dropout(0.1)(attended))
    hidden = layers.Dense(32, activation="gelu")(x)
    x = layers.LayerNormalization(epsilon=1e-6)(x + layers.Dense(16)(hidden))
    return keras.Model(inputs, layers.Dense(3)(layers.GlobalAveragePooling1D()(x)))


def _causal_attention() -> Any:
    ids = keras.Input((8,), dtype="int32", name="ids")
    x = layers.Embedding(40, 16)(ids)
    attended = layers.MultiHeadAttention(2, 8)(x, x, use_causal_mask=True)
    return keras.Model(ids, layers.Dense(40)(layers.LayerNormalization()(x + attended)))


_WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran"]


def _sentences(batch: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.array([" ".join(rng.choice([*_WORDS, "zebra"], size=rng.integers(2, 7)))
                     for _ in range(batch)], dtype=object).reshape(batch, 1)


def _text_classifier() -> Any:
    vectorize = layers.TextVectorization(max_tokens=20, output_sequence_length=6)
    vectorize.adapt(tf.constant([" ".join(_WORDS), "the cat ran", "a dog sat on the mat"]))
    text = keras.Input((1,), dtype="string", name="text")
    x = layers.Embedding(20, 4)(vectorize(text))
    return keras.Model(text, layers.Dense(2)(layers.GlobalAveragePooling1D()(x)))


def _string_lookup() -> Any:
    words = keras.Input((3,), dtype="string", name="words")
    ids = layers.StringLookup(vocabulary=_WORDS)(words)
    hot = layers.CategoryEncoding(len(_WORDS) + 1, output_mode="multi_hot")(ids)
    return keras.Model(words, {"ids": ids, "score": layers.Dense(1)(hot)})


def _words(batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).choice([*_WORDS, "zebra"], size=(batch, 3)).astype(object)


def _preprocessing() -> Any:
    norm = layers.Normalization()
    norm.adapt(np.random.default_rng(5).uniform(0, 255, size=(16, 12, 12, 3)).astype("float32"))
    inputs = keras.Input((20, 24, 3), name="pixels")
    x = layers.Resizing(12, 12)(inputs)
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0)(x) + norm(x) * 0.1
    x = layers.Conv2D(6, 3, activation="relu")(x)
    return keras.Model(inputs, layers.Dense(2)(layers.GlobalAveragePooling2D()(x)))


def _pixels(batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, size=(batch, 20, 24, 3)).astype("float32")


def _mixed_float16() -> Any:
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inputs = keras.Input((12, 12, 3))
        x = layers.Conv2D(8, 3, activation="relu")(inputs)
        x = layers.BatchNormalization()(x)
        x = layers.Dense(4)(layers.GlobalAveragePooling2D()(x))
        outputs = layers.Activation("softmax", dtype="float32")(x)
        return keras.Model(inputs, outputs)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _dict_inputs() -> Any:
    image = keras.Input((8, 8, 3), name="image")
    table = keras.Input((5,), name="table")
    tokens = keras.Input((7,), dtype="int32", name="tokens")
    a = layers.GlobalAveragePooling2D()(layers.Conv2D(4, 3)(image))
    b = layers.Dense(4, activation="relu")(table)
    c = layers.Flatten()(layers.Embedding(20, 2)(tokens))
    merged = layers.Concatenate()([a, b, c])
    return keras.Model({"image": image, "table": table, "tokens": tokens},
                       {"score": layers.Dense(1)(merged), "label": layers.Dense(3)(merged)})


def _dict_examples(batch: int, seed: int) -> dict[str, np.ndarray]:
    return {"image": normal(batch, 8, 8, 3, seed=seed), "table": normal(batch, 5, seed=seed + 1),
            "tokens": ints(0, 20, batch, 7, seed=seed)}


class GatedResidual(keras.Model):  # type: ignore[misc]
    """A subclassed model with a custom ``call``: a residual MLP with a gated skip.

    Not named with a leading underscore: Keras 3 names the model after its class, and
    ``tf.saved_model.save`` refuses the variable scope ``__residual/bias`` that follows.
    """

    def __init__(self) -> None:
        super().__init__()
        self.inner = layers.Dense(8, activation="tanh")
        self.gate = layers.Dense(8, activation="sigmoid")
        self.dropout = layers.Dropout(0.3)
        self.head = layers.Dense(3)

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        hidden = self.inner(inputs)
        mixed = self.gate(inputs) * hidden + keras.ops.tile(inputs[:, :1], [1, 8])
        return self.head(self.dropout(mixed, training=training))


def _subclassed() -> Any:
    model = GatedResidual()
    model(np.zeros((1, 6), "float32"))
    return model


class TwoTowers(keras.Model):  # type: ignore[misc]
    """A subclassed model whose ``call`` reads a dict: it has no ``input`` saying so."""

    def __init__(self) -> None:
        super().__init__()
        self.image = layers.Dense(4, activation="relu")
        self.meta = layers.Dense(4)
        self.head = layers.Dense(2)

    def call(self, inputs: dict[str, Any], training: bool | None = None) -> Any:
        return self.head(self.image(inputs["image"]) * self.meta(inputs["meta"]))


def _dict_call() -> Any:
    model = TwoTowers()
    model(_towers_inputs(1, 0))
    return model


def _towers_inputs(batch: int, seed: int) -> dict[str, np.ndarray]:
    return {"image": normal(batch, 5, seed=seed), "meta": normal(batch, 3, seed=seed + 1)}


def _training_layers() -> Any:
    inputs = keras.Input((10,))
    x = layers.Dense(16)(inputs)
    norm = layers.BatchNormalization()
    x = layers.Dropout(0.5)(layers.ReLU()(norm(x)))
    x = layers.GaussianNoise(0.3)(layers.Dense(8)(x))
    x = layers.SpatialDropout1D(0.2)(layers.Reshape((2, 4))(x))
    model = keras.Model(inputs, layers.Dense(3)(layers.Flatten()(x)))
    gamma, beta, _, _ = norm.get_weights()  # inference uses the moving statistics: not 0 and 1
    norm.set_weights([gamma * 1.5, beta + 0.1, normal(16, seed=3), np.abs(normal(16)) + 0.5])
    return model


def _sequential() -> Any:
    return keras.Sequential([
        keras.Input((16, 16, 3)),
        layers.RandomFlip("horizontal"),
        layers.Conv2D(4, 3, activation="relu"),
        layers.MaxPooling2D(),
        layers.Flatten(),
        layers.Dense(2),
    ])


# --- the cases ---------------------------------------------------------------------------------


#: applications: every supported op compiled, nothing timed (timing them takes minutes). One
#: application keeps the file under 3 minutes: EfficientNetB0 (its Rescaling and Normalization
#: front end) passes the same way, in 40 s for the export leg alone.
_ALL = {"placement": "all"}


def _cases(save: Any = export) -> dict[str, Case]:
    """Every case, the original saved with ``save``."""
    kwargs = {"save": save}
    return {
        "mobilenet_v3_small": Case(_application("MobileNetV3Small"), shaped(32, 32, 3),
                                   slow=True, trace_kwargs=_ALL, **kwargs),
        "lstm_gru_bidirectional": Case(_recurrent, shaped(6, 4), **kwargs),
        "masked_embedding_lstm": Case(_masked_recurrent, _padded_ids, **kwargs),
        "keras_ops_custom_layer": Case(_keras_ops, shaped(6), **kwargs),
        "transformer_block": Case(_transformer_block, shaped(8, 16), **kwargs),
        "causal_attention_embedding": Case(_causal_attention, lambda b, s: ints(0, 40, b, 8, seed=s),
                                           **kwargs),
        # the service's child: a fresh process loads the SavedModel and its vocabulary asset
        "text_vectorization": Case(_text_classifier, _sentences, fresh_process=True, **kwargs),
        "string_lookup": Case(_string_lookup, _words, **kwargs),
        "normalization_rescaling": Case(_preprocessing, _pixels, **kwargs),
        "mixed_float16": Case(_mixed_float16, shaped(12, 12, 3), rtol=RTOL_FLOAT16, **kwargs),
        "dict_inputs_dict_outputs": Case(_dict_inputs, _dict_examples, **kwargs),
        "subclassed_custom_call": Case(_subclassed, shaped(6), **kwargs),
        "subclassed_call_reads_a_dict": Case(_dict_call, _towers_inputs, **kwargs),
        "dropout_batch_norm_noise": Case(_training_layers, shaped(10), **kwargs),
        # model.export leaves RandomFlip active (see the test below): exported for inference
        "sequential_random_flip": Case(_sequential, shaped(16, 16, 3),
                                       save=export_for_inference),
    }


CASES = _cases()
#: ``tf.saved_model.save(model, dir)``: the guides' way, the signature Keras 3 gives it
SAVED_MODEL_CASES = {
    name: case for name, case in _cases(save=saved_model_save).items()
    if name in ("normalization_rescaling", "dict_inputs_dict_outputs", "subclassed_custom_call")
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=case_marks(c)) for n, c in CASES.items()])
def test_keras3_exported_model_round_trips(name: str, tmp_path: Path) -> None:
    check_case(CASES[name], tmp_path)


@pytest.mark.parametrize("name", [pytest.param(n, marks=case_marks(c))
                                  for n, c in SAVED_MODEL_CASES.items()])
def test_keras3_saved_model_save_round_trips(name: str, tmp_path: Path) -> None:
    check_case(SAVED_MODEL_CASES[name], tmp_path)


def test_keras3_export_with_active_augmentation_is_refused_naming_the_layers(
        tmp_path: Path) -> None:
    """``model.export`` serves ``model(x)``, where Keras 3's RandomFlip defaults to
    ``training=True``: the served model flips at random, drawing from a SeedGenerator variable
    it advances. A frozen model cannot: the error names the layer and how to export without it."""
    import kiln_worker
    from kiln_worker.tracer.errors import UnsupportedModelError

    model = _sequential()
    x = normal(2, 16, 16, 3)
    loaded = tf.saved_model.load(str(export(model, tmp_path / "m")))
    signature = loaded.signatures["serving_default"]
    (name,) = signature.structured_input_signature[1]
    flips = {bool((signature(**{name: tf.constant(x)})["output_0"].numpy() !=
                   np.asarray(model(x, training=False))).any()) for _ in range(12)}
    assert flips == {False, True}, "the exported model no longer flips at random"
    with pytest.raises(UnsupportedModelError) as caught:
        kiln_worker.trace(signature, {name: x})
    message = str(caught.value)
    assert caught.value.pass_name == "freeze"
    assert "Keras 3 layers draw random numbers" in message and "random_flip" in message, message
    assert "training=False" in message and "ExportArchive" in message, message


class SeededNoise(layers.Layer):  # type: ignore[misc]
    """Noise at inference too, drawn by ``keras.random`` from a SeedGenerator."""

    def __init__(self) -> None:
        super().__init__()
        self.seed_generator = keras.random.SeedGenerator(1)

    def call(self, x: Any) -> Any:
        return x + keras.random.normal(keras.ops.shape(x), seed=self.seed_generator)


def test_keras3_layer_drawing_at_inference_is_refused_saying_what_to_draw_with() -> None:
    import kiln_worker
    from kiln_worker.tracer.errors import UnsupportedModelError

    inputs = keras.Input((4,))
    model = keras.Model(inputs, SeededNoise()(inputs))
    with pytest.raises(UnsupportedModelError) as caught:
        kiln_worker.trace(model, normal(2, 4))
    message = str(caught.value)
    assert "seeded_noise" in message and "seed_generator_state" in message, message
    assert "must use tf.random.uniform or tf.random.normal" in message, message
