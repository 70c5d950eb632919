"""Fixtures for the tracer tests: real TensorFlow (Keras 2 as tf.keras), tiny models."""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _no_env_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests pass flags explicitly; a developer's NEURON_CC_FLAGS must not leak in."""
    monkeypatch.delenv("NEURON_CC_FLAGS", raising=False)
    monkeypatch.delenv("KILN_TRACE_BACKEND", raising=False)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def max_rel_diff(a: object, b: object) -> float:
    """Max abs difference of two arrays relative to the largest magnitude (at least 1)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert x.shape == y.shape, (x.shape, y.shape)
    return float(np.max(np.abs(x - y)) / max(1.0, float(np.max(np.abs(x)))))


def mlp(width: int = 64):  # type: ignore[no-untyped-def]
    """A 3-layer MLP in Keras 2."""
    import tensorflow as tf

    inputs = tf.keras.Input(32)
    x = tf.keras.layers.Dense(width, activation="relu")(inputs)
    x = tf.keras.layers.Dense(width, activation="relu")(x)
    outputs = tf.keras.layers.Dense(10, activation="softmax")(x)
    return tf.keras.Model(inputs, outputs)
