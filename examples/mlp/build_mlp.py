"""Build Kiln's bundled example: a small Keras MLP saved as a TF2 SavedModel.

    python examples/mlp/build_mlp.py examples/mlp

writes ``mlp.tar.gz`` (the SavedModel at the archive's root folder ``mlp/``) and
``example_inputs.npz`` (the inputs ``x``, keyed by the signature's input name). The weights come
from a fixed seed, so the files are reproducible in content (not byte for byte).
"""

from __future__ import annotations

import os
import sys
import tarfile
import tempfile
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # Keras 2, as tensorflow-neuron users have
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf


def build_model() -> tf.keras.Model:
    """A 8 → 16 → 16 → 4 MLP with named input ``x`` and output ``logits``."""
    tf.keras.utils.set_random_seed(7)
    x = tf.keras.Input(shape=(8,), name="x")
    h = tf.keras.layers.Dense(16, activation="relu", name="hidden1")(x)
    h = tf.keras.layers.Dense(16, activation="tanh", name="hidden2")(h)
    logits = tf.keras.layers.Dense(4, name="logits")(h)
    return tf.keras.Model(inputs=x, outputs={"logits": logits}, name="mlp")


def main(out: str) -> None:
    """Write ``mlp.tar.gz`` and ``example_inputs.npz`` into ``out``."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = build_model()
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "mlp"
        tf.saved_model.save(model, str(saved))
        with tarfile.open(out_dir / "mlp.tar.gz", "w:gz") as tar:
            tar.add(saved, arcname="mlp")
    inputs = np.random.default_rng(7).standard_normal((2, 8)).astype(np.float32)
    np.savez(out_dir / "example_inputs.npz", x=inputs)
    print(f"wrote {out_dir / 'mlp.tar.gz'} and {out_dir / 'example_inputs.npz'}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).parent))
