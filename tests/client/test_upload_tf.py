"""Saving keras models and tf.functions for upload (needs TensorFlow; skipped without it)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("tf_keras")

from kiln_client._upload import prepare_upload, signature_input_names  # noqa: E402


def test_keras_positional_inputs_follow_model_input_order(tmp_path: Path) -> None:
    zeta = keras.Input(shape=(3,), name="zeta")
    alpha = keras.Input(shape=(2,), name="alpha")
    model = keras.Model([zeta, alpha], keras.layers.Dense(4)(keras.layers.Concatenate()([zeta, alpha])))
    up = prepare_upload(model, [np.ones((1, 3), "float32"), tf.zeros((1, 2))],
                        signature="serving_default", workdir=tmp_path)
    # The signature lists inputs sorted (alpha, zeta); positional inputs follow model.inputs.
    assert signature_input_names(up.model, "serving_default") == ["alpha", "zeta"]
    with np.load(up.example_inputs, allow_pickle=False) as npz:  # type: ignore[arg-type]
        assert npz["zeta"].shape == (1, 3) and npz["alpha"].shape == (1, 2)


def test_tf_function_is_traced_with_the_example_inputs(tmp_path: Path) -> None:
    @tf.function
    def add(x, y):  # type: ignore[no-untyped-def]
        return {"out": x + 2 * y}

    up = prepare_upload(add, (tf.ones((2, 3)), np.zeros((2, 3), "float32")),
                        signature="serving_default", workdir=tmp_path)
    assert signature_input_names(up.model, "serving_default") == ["x", "y"]
    with np.load(up.example_inputs, allow_pickle=False) as npz:  # type: ignore[arg-type]
        np.testing.assert_array_equal(npz["x"], np.ones((2, 3)))
        np.testing.assert_array_equal(npz["y"], np.zeros((2, 3)))


def test_string_tensors_are_written_with_their_lengths(tmp_path: Path) -> None:
    from kiln_client import example_inputs

    @tf.function
    def length(words):  # type: ignore[no-untyped-def]
        return {"n": tf.strings.length(words)}

    words = tf.constant([["ab\x00", "é"], ["", "\x00\x00"]])
    up = prepare_upload(length, words, signature="serving_default", workdir=tmp_path)
    with np.load(up.example_inputs, allow_pickle=False) as npz:  # type: ignore[arg-type]
        lengths = npz[example_inputs.LENGTHS_PREFIX + "words"]
        assert lengths.tolist() == [[3, 2], [0, 2]]  # bytes: "é" is two in UTF-8
        restored = example_inputs.decode("words", npz["words"], lengths)
    assert restored.tolist() == words.numpy().tolist()
