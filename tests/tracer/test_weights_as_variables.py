"""A large model's large constants stay variables (``freeze.weights_as_variables``): compiled
subgraphs take them as arguments, and the traced model saves and reloads them as variables.

The thresholds are lowered so that a small MLP, loaded from a SavedModel as the worker loads
models, takes the path a BERT-base encoder takes (``tests/reliability/test_default_limits.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tests.tracer.conftest import max_rel_diff, mlp


def test_large_constants_become_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tensorflow as tf

    import kiln_worker
    from kiln_worker.tracer import freeze

    monkeypatch.setattr(freeze, "WEIGHTS_AS_VARIABLES_BYTES", 1)
    monkeypatch.setattr(freeze, "LARGE_CONSTANT_BYTES", 4096)  # the 32x64 and 64x64 kernels
    model = mlp()
    module = tf.Module()
    module.model = model
    module.serve = tf.function(lambda x: {"y": model(x)},
                               input_signature=[tf.TensorSpec([None, 32], tf.float32, "x")])
    tf.saved_model.save(module, str(tmp_path / "original"), signatures={"serving_default": module.serve})
    loaded = tf.saved_model.load(str(tmp_path / "original"))  # owns the variables: keep it
    signature = loaded.signatures["serving_default"]
    x = np.random.default_rng(3).normal(size=(2, 32)).astype("float32")

    traced = kiln_worker.trace(signature, {"x": x}, subgraph_builder_function=lambda n: True)
    assert traced.report["subgraphs"] and all(
        s["status"] == "compiled" for s in traced.report["subgraphs"])
    assert sorted(tuple(w.shape) for w in traced._kiln_weights) == [(32, 64), (64, 64)]
    expected = model(x).numpy()
    assert max_rel_diff(expected, traced({"x": x})["y"]) < 1e-5

    traced.save(str(tmp_path / "traced"))
    reloaded = tf.saved_model.load(str(tmp_path / "traced"))
    assert sorted(tuple(v.shape) for v in reloaded.variables) == [(32, 64), (64, 64)]
    out = reloaded.signatures["serving_default"](tf.constant(x))
    assert max_rel_diff(expected, next(iter(out.values()))) < 1e-5
