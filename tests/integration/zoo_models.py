"""Tiny SavedModels for the integration zoo (run as a script, so tests never import TensorFlow).

    python tests/integration/zoo_models.py OUT_DIR [NAME ...]

writes, for each model, ``OUT_DIR/NAME/model/`` (the SavedModel), ``OUT_DIR/NAME/model.tar.gz``
(it, under a top folder ``model/``), ``example_inputs.npz`` (what the job is compiled with) and
``other_inputs.npz`` (another batch size, to serve the compiled model with). To add a model, add
a function returning ``(saved_model_writer, example_inputs, other_inputs)`` to ``BUILDERS``.
"""

from __future__ import annotations

import os
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np
import tensorflow as tf

Inputs = dict[str, np.ndarray]
Built = tuple[Callable[[Path], None], Inputs, Inputs]


def _keras_writer(model: Any) -> Callable[[Path], None]:
    return lambda path: model.save(str(path), save_format="tf")


def _lstm(_: Path) -> Built:
    tf.keras.utils.set_random_seed(3)
    x = tf.keras.Input((5, 3), name="x")
    h = tf.keras.layers.LSTM(6)(x)
    model = tf.keras.Model(x, tf.keras.layers.Dense(2)(h))
    rng = np.random.default_rng(3)
    example = {"x": rng.normal(size=(2, 5, 3)).astype(np.float32)}
    return _keras_writer(model), example, {"x": rng.normal(size=(3, 5, 3)).astype(np.float32)}


def _string_lookup(_: Path) -> Built:
    """Wide and deep on a string feature (StringLookup) and a numeric one; dict inputs."""
    tf.keras.utils.set_random_seed(4)
    city = tf.keras.Input((1,), dtype=tf.string, name="city")
    num = tf.keras.Input((2,), name="num")
    lookup = tf.keras.layers.StringLookup(vocabulary=["paris", "rome", "oslo"], output_mode="one_hot")
    wide = lookup(city)
    deep = tf.keras.layers.Dense(8, activation="relu")(tf.keras.layers.Concatenate()([wide, num]))
    out = tf.keras.layers.Dense(1)(tf.keras.layers.Concatenate()([wide, deep]))
    model = tf.keras.Model({"city": city, "num": num}, out)
    rng = np.random.default_rng(4)

    def inputs(cities: list[str]) -> Inputs:
        num = rng.normal(size=(len(cities), 2)).astype(np.float32)
        return {"city": np.array(cities)[:, None], "num": num}

    return _keras_writer(model), inputs(["paris", "lima"]), inputs(["rome", "oslo", "nyc"])


def _text_vectorization(_: Path) -> Built:
    tf.keras.utils.set_random_seed(5)
    vectorize = tf.keras.layers.TextVectorization(max_tokens=16, output_sequence_length=5)
    vectorize.adapt(tf.constant(["the cat sat", "the dog ran", "a cat and a dog"]))
    text = tf.keras.Input((1,), dtype=tf.string, name="text")
    h = tf.keras.layers.GlobalAveragePooling1D()(tf.keras.layers.Embedding(16, 4)(vectorize(text)))
    model = tf.keras.Model(text, tf.keras.layers.Dense(2)(h))
    example = {"text": np.array([["the cat"], ["a dog ran far"]])}
    return _keras_writer(model), example, {"text": np.array([["dog"], ["cat sat"], ["new words"]])}


class _AssetTable(tf.Module):  # type: ignore[misc]
    """A vocabulary file (an asset of the SavedModel) → ids → embedding → dense."""

    def __init__(self, vocabulary: Path) -> None:
        super().__init__()
        init = tf.lookup.TextFileInitializer(
            str(vocabulary), tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
            tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER)
        self.table = tf.lookup.StaticVocabularyTable(init, num_oov_buckets=1)
        rng = np.random.default_rng(6)
        self.embedding = tf.Variable(rng.normal(size=(5, 3)).astype(np.float32))
        self.w = tf.Variable(rng.normal(size=(3, 2)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="words")])
    def serve(self, words: tf.Tensor) -> dict[str, tf.Tensor]:
        ids = self.table.lookup(words)
        return {"y": tf.tanh(tf.matmul(tf.gather(self.embedding, ids), self.w))}


def _asset_table(out: Path) -> Built:
    vocabulary = out / "vocab.txt"
    vocabulary.write_text("apple\nbanana\ncherry\nplum\n")
    module = _AssetTable(vocabulary)

    def write(path: Path) -> None:
        tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
        vocabulary.unlink()  # from now on, only the SavedModel's own copy (assets/) exists

    example = {"words": np.array(["apple", "kiwi"])}
    return write, example, {"words": np.array(["plum", "banana", "fig"])}


class _RandomDraw(tf.Module):  # type: ignore[misc]
    """A dense layer next to a fresh tf.random.uniform draw at each call."""

    def __init__(self) -> None:
        super().__init__()
        self.w = tf.Variable(np.random.default_rng(4).normal(size=(4, 3)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])  # type: ignore[misc]
    def __call__(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": tf.tanh(x @ self.w), "noise": tf.random.uniform(tf.shape(x))}


class _SortedSegments(tf.Module):  # type: ignore[misc]
    """Rows summed per (sorted) segment id: the output's size depends on the ids."""

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="values"),
                                  tf.TensorSpec([None], tf.int32, name="ids")])  # type: ignore[misc]
    def __call__(self, values: tf.Tensor, ids: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"sum": tf.math.segment_sum(values, ids), "max": tf.math.segment_max(values, ids)}


def _module_writer(module: tf.Module) -> Callable[[Path], None]:
    return lambda path: tf.saved_model.save(module, str(path))


def _random_draw(_: Path) -> Built:
    rng = np.random.default_rng(5)
    example = {"x": rng.normal(size=(2, 4)).astype(np.float32)}
    return _module_writer(_RandomDraw()), example, {"x": rng.normal(size=(3, 4)).astype(np.float32)}


def _sorted_segments(_: Path) -> Built:
    rng = np.random.default_rng(6)

    def inputs(ids: list[int]) -> Inputs:
        return {"values": rng.normal(size=(len(ids), 3)).astype(np.float32),
                "ids": np.array(ids, np.int32)}

    return _module_writer(_SortedSegments()), inputs([0, 0, 1, 2]), inputs([0, 1, 1, 3, 3])


def _keras3_export(_: Path) -> Built:
    """Keras 3 (``import keras``, tf.keras on TensorFlow 2.16+) saved with ``model.export``: a
    dict of an image and a sequence, a convolution and a GRU."""
    import keras

    keras.utils.set_random_seed(6)
    image, steps = keras.Input((8, 8, 3), name="image"), keras.Input((5, 3), name="steps")
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(image))
    merged = keras.layers.Concatenate()([pooled, keras.layers.GRU(4)(steps)])
    model = keras.Model({"image": image, "steps": steps}, keras.layers.Dense(2)(merged))
    rng = np.random.default_rng(6)

    def inputs(batch: int) -> Inputs:
        return {"image": rng.normal(size=(batch, 8, 8, 3)).astype(np.float32),
                "steps": rng.normal(size=(batch, 5, 3)).astype(np.float32)}

    return lambda path: model.export(str(path), verbose=False), inputs(2), inputs(3)


BUILDERS: dict[str, Callable[[Path], Built]] = {
    "random_draw": _random_draw,
    "sorted_segments": _sorted_segments,
    "lstm": _lstm,
    "string_lookup": _string_lookup,
    "text_vectorization": _text_vectorization,
    "asset_table": _asset_table,
    "keras3_export": _keras3_export,
}


def build(name: str, out: Path) -> None:
    """Write one model's SavedModel, archive and input files under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    write, example, other = BUILDERS[name](out)
    write(out / "model")
    with tarfile.open(out / "model.tar.gz", "w:gz") as tar:
        tar.add(out / "model", arcname="model")
    np.savez(out / "example_inputs.npz", **example)
    np.savez(out / "other_inputs.npz", **other)


if __name__ == "__main__":
    for model_name in sys.argv[2:] or BUILDERS:
        build(model_name, Path(sys.argv[1]) / model_name)
