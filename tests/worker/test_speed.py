"""The serving-speed figure of a job's report (``kiln_worker._speed``)."""

from __future__ import annotations

from typing import Any


def test_speed_is_measured_with_a_scalar_input_passed_whole() -> None:
    # A signature taking a temperature next to the batch: the batch is cut to one row, the
    # scalar and a fixed-shape side input are passed whole (they used to skip the measurement).
    import numpy as np
    import tensorflow as tf

    from kiln_worker._speed import measure_speed

    def model(x: Any, temperature: Any, table: Any) -> dict[str, Any]:
        return {"y": tf.nn.softmax(tf.matmul(x, table) / temperature)}

    inputs = {"x": np.ones((3, 4), np.float32), "temperature": np.float32(0.7),
              "table": np.ones((4, 5), np.float32)}
    batches = measure_speed(model, model, inputs)["batches"]
    assert set(batches) == {"1", "3"}
    assert all("speedup" in entry for entry in batches.values()), batches
