"""Compile now, fall back per subgraph (seed point 5); automatic placement's choices."""

from __future__ import annotations

import numpy as np
from tests.tracer.conftest import max_rel_diff


def _nms(boxes, scores):  # type: ignore[no-untyped-def]
    import tensorflow as tf

    # XLA registers NonMaxSuppressionV4 but compiles it only with padded outputs: every op of
    # this subgraph passes placement, and the compile itself fails.
    selected, count = tf.raw_ops.NonMaxSuppressionV4(
        boxes=boxes * 1.0,
        scores=scores + 0.0,
        max_output_size=3,
        iou_threshold=0.5,
        score_threshold=0.0,
        pad_to_max_output_size=False,
    )
    return tf.cast(selected, tf.float32) * 2.0 + tf.cast(count, tf.float32)


def test_subgraph_xla_rejects_falls_back_to_cpu() -> None:
    import tensorflow as tf

    import kiln_worker

    boxes = tf.constant([[0, 0, 1, 1], [0, 0, 1, 1.1], [2, 2, 3, 3]], tf.float32)
    scores = tf.constant([0.9, 0.8, 0.7])
    traced = kiln_worker.trace(_nms, (boxes, scores), subgraph_builder_function=lambda n: True)
    subgraphs = traced.report["subgraphs"]
    failed = [s for s in subgraphs if s["status"] == "fallback_cpu"]
    assert len(failed) == 1, subgraphs
    assert "xla rejected it" in failed[0]["reason"]
    assert "pad_to_max_output_size" in failed[0]["reason"]
    assert "NonMaxSuppressionV4" in failed[0]["op_types"]
    cpu = {op["name"]: op["reason"] for op in traced.report["cpu_ops"]}
    assert all("fallback_cpu" in cpu[name] for name in failed[0]["ops"])
    np.testing.assert_array_equal(_nms(boxes, scores).numpy(), traced((boxes, scores)).numpy())


def test_automatic_mode_keeps_depthwise_conv_on_cpu_and_measures(rng: np.random.Generator) -> None:
    import tensorflow as tf

    import kiln_worker

    inputs = tf.keras.Input((16, 16, 8))
    x = tf.keras.layers.DepthwiseConv2D(3, padding="same")(inputs)
    x = tf.keras.layers.Conv2D(8, 1, activation="relu")(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(4, activation="softmax")(x))
    example = rng.normal(size=(1, 16, 16, 8)).astype("float32")
    traced = kiln_worker.trace(model, example)
    report = traced.report
    cpu_types = {op["op"]: op["reason"] for op in report["cpu_ops"]}
    assert "automatic placement" in cpu_types["DepthwiseConv2dNative"]
    for entry in report["subgraphs"]:
        assert entry["status"] in {"compiled", "rejected_no_gain", "fallback_cpu"}
        assert "measured_speedup" in entry or entry["status"] == "fallback_cpu"
        if entry["status"] == "rejected_no_gain":
            assert "measured" in entry["reason"]
    assert max_rel_diff(model(example), traced(example)) < 1e-4


def test_automatic_mode_skips_trivial_subgraphs() -> None:
    import tensorflow as tf

    import kiln_worker

    traced = kiln_worker.trace(lambda x: tf.reshape(x, [-1, 6]) * 2.0, tf.ones([1, 2, 3]))
    assert traced.report["subgraphs"] == []  # one cheap op (Mul) alone is not worth a call
    assert any("trivial" in op["reason"] for op in traced.report["cpu_ops"])
    assert traced.report["warnings"]
