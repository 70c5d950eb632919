"""Build standard-size SavedModels for the default-limits tests, in a subprocess of the tests.

Usage: python _build_big_models.py OUT_DIR [resnet50] [bert_base]. Writes
OUT_DIR/<name>/model.tar.gz (no example inputs: the worker generates them from the signature).

* ``resnet50``: ``tf.keras.applications.ResNet50(weights=None)``, input 224x224x3, batch 1.
* ``bert_base``: a BERT-base-size encoder from Keras layers: 12 layers, hidden 768, 12 heads,
  feed-forward 3072, vocabulary 30522, sequence 128 (token ids in, pooled output out).
"""

from __future__ import annotations

import os
import sys
import tarfile

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf
import tf_keras as keras

SEQ, HIDDEN, LAYERS, HEADS, FFN, VOCAB = 128, 768, 12, 12, 3072, 30522


def resnet50() -> tf.Module:
    model = keras.applications.ResNet50(weights=None)
    module = tf.Module()
    module.weights = list(model.variables)  # not the Keras model: saving it would trace each layer
    module.serve = tf.function(lambda x: {"probs": model(x, training=False)},
                               input_signature=[tf.TensorSpec([1, 224, 224, 3], tf.float32, "x")])
    return module


def _encoder_layer(x: tf.Tensor) -> tf.Tensor:
    attn = keras.layers.MultiHeadAttention(HEADS, HIDDEN // HEADS)(x, x)
    x = keras.layers.LayerNormalization(epsilon=1e-12)(x + attn)
    ffn = keras.layers.Dense(FFN, activation="gelu")(x)
    return keras.layers.LayerNormalization(epsilon=1e-12)(x + keras.layers.Dense(HIDDEN)(ffn))


def bert_base() -> tf.Module:
    ids = keras.Input(shape=(SEQ,), dtype="int32", name="input_ids")
    positions = tf.range(SEQ)[tf.newaxis, :]
    x = keras.layers.Embedding(VOCAB, HIDDEN)(ids) + keras.layers.Embedding(SEQ, HIDDEN)(positions)
    x = keras.layers.LayerNormalization(epsilon=1e-12)(x)
    for _ in range(LAYERS):
        x = _encoder_layer(x)
    pooled = keras.layers.Dense(HIDDEN, activation="tanh")(x[:, 0])
    model = keras.Model(ids, pooled)
    module = tf.Module()
    module.weights = list(model.variables)
    module.serve = tf.function(lambda input_ids: {"pooled": model(input_ids, training=False)},
                               input_signature=[tf.TensorSpec([1, SEQ], tf.int32, "input_ids")])
    return module


def main(out: str, names: list[str]) -> None:
    for name in names or ["resnet50", "bert_base"]:
        module = {"resnet50": resnet50, "bert_base": bert_base}[name]()
        folder = os.path.join(out, name)
        tf.saved_model.save(module, os.path.join(folder, "model"),
                            signatures={"serving_default": module.serve})
        with tarfile.open(os.path.join(folder, "model.tar.gz"), "w:gz") as tar:
            tar.add(os.path.join(folder, "model"), arcname="model")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
