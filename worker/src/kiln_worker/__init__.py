"""Kiln worker: the tracer (``kiln_worker.trace``), the Celery worker and its compile child.

``trace``, ``analyze_model`` and ``load`` resolve lazily, so ``import kiln_worker`` loads no TensorFlow.

Importing it makes ``tf.keras`` Keras 2 (``TF_USE_LEGACY_KERAS=1``), as it is in the TensorFlow
that tensorflow-neuron runs on, so that code written for ``tensorflow.neuron`` (``tf.keras.layers.Input(3)``,
``tf.keras.models.load_model`` of a traced SavedModel) runs with only its import changed. TensorFlow
resolves ``tf.keras`` at its first use, so this holds when ``kiln_worker`` is imported before that.
A ``TF_USE_LEGACY_KERAS`` the user set is left alone (``0`` keeps Keras 3), and so is a ``tf.keras``
already in use. Models from ``import keras`` (Keras 3) trace either way.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

__all__ = ["analyze_model", "load", "trace"]

#: where each lazily-resolved public name lives
_HOMES = {"analyze_model": "kiln_worker.tracer.api", "trace": "kiln_worker.tracer.api",
          "load": "kiln_worker.manifest"}


def _keras_2_as_tf_keras() -> None:
    """``TF_USE_LEGACY_KERAS=1`` unless the user set it or ``tf.keras`` is resolved already."""
    tf = sys.modules.get("tensorflow")
    if getattr(getattr(tf, "keras", None), "_tfll_initialized", False):
        return
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


_keras_2_as_tf_keras()


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'kiln_worker' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
