"""analyze_model, progress callbacks, lazy import, control flow (While) subgraphs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from tests.tracer.conftest import max_rel_diff, mlp


def test_import_kiln_worker_does_not_import_tensorflow() -> None:
    code = (
        "import sys, kiln_worker; assert 'tensorflow' not in sys.modules; "
        "assert callable(kiln_worker.__getattr__); print(sorted(kiln_worker.__all__))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "'analyze_model', 'load', 'trace'" in out.stdout


def test_analyze_model_lists_supported_and_unsupported_ops() -> None:
    import tensorflow as tf

    import kiln_worker

    def func(x):  # type: ignore[no-untyped-def]
        hidden = tf.nn.relu(tf.matmul(x, tf.ones([4, 4])))
        as_text = tf.strings.as_string(hidden)
        return tf.strings.to_number(as_text) + hidden

    analysis = kiln_worker.analyze_model(func, tf.ones([1, 4]))
    assert analysis["op_types"]["MatMul"] == {"count": 1, "supported": 1}
    unsupported = {u["op"]: u["reason"] for u in analysis["unsupported"]}
    assert "AsString" in unsupported and "no kernel for AsString" in unsupported["AsString"]
    assert 0 < analysis["supported_ratio"] < 1
    assert analysis["proposed_subgraphs"]


def test_progress_stages_in_order(rng: np.random.Generator) -> None:
    import kiln_worker

    seen: list[tuple[str, float, str]] = []
    kiln_worker.trace(
        mlp(),
        rng.normal(size=(1, 32)).astype("float32"),
        on_progress=lambda stage, fraction, message: seen.append((stage, fraction, message)),
    )
    stages = [s for s, _, _ in seen]
    assert stages[0] == "tracing" and stages[-1] == "verifying"
    assert "compiling subgraph 1 of 1" in [m for s, _, m in seen if s == "compiling"]
    order = {"tracing": 0, "compiling": 1, "verifying": 2}
    assert [order[s] for s in stages] == sorted(order[s] for s in stages)
    assert all(0.0 <= f <= 1.0 for _, f, _ in seen)


def test_lstm_loop_is_one_compiled_subgraph(rng: np.random.Generator) -> None:
    import tensorflow as tf

    import kiln_worker

    inputs = tf.keras.Input((6, 4))
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(2)(tf.keras.layers.LSTM(8)(inputs)))
    x = rng.normal(size=(2, 6, 4)).astype("float32")
    traced = kiln_worker.trace(model, x, subgraph_builder_function=lambda n: True)
    compiled = [s for s in traced.report["subgraphs"] if s["status"] == "compiled"]
    assert any("While" in t for s in compiled for t in s["op_types"])
    assert max_rel_diff(model(x), traced(x)) < 1e-5


def test_neuron_backend_is_dispatched_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    import kiln_worker
    from kiln_worker.tracer.errors import TraceError

    monkeypatch.setenv("KILN_TRACE_BACKEND", "neuron")
    try:
        import tensorflow.neuron  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        with pytest.raises(TraceError):
            kiln_worker.trace(lambda x: x * 2.0, np.ones((1, 2), "float32"))
    else:  # pragma: no cover - Inf1 hosts only
        pytest.skip("tensorflow-neuron is installed")


def test_tracing_logs_no_retracing_warning(rng: np.random.Generator) -> None:
    """A trace runs many graphs once each; TensorFlow must not report them to the user as one
    function retraced again and again ("triggered tf.function retracing")."""
    import logging

    import tensorflow as tf

    import kiln_worker

    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    tf.get_logger().addHandler(handler)
    try:
        for _ in range(3):
            kiln_worker.trace(mlp(16), rng.standard_normal((2, 32)).astype(np.float32))
    finally:
        tf.get_logger().removeHandler(handler)
    assert not [r for r in records if "retracing" in r], records
