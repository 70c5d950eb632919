"""String example inputs through the SDK and the running service, byte for byte.

A serialized record can end in NUL bytes, which NumPy's fixed-width ``S`` arrays drop. The SDK
stores each string input's lengths beside it (``kiln_client.example_inputs``); the service
checks them and the compile child restores the values whole. The model here asserts that its
records end in a NUL byte, so a job that lost them fails with the model's message.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from integration_support import Stack

from kiln_client import Client, JobFailed

pytestmark = pytest.mark.integration
RECORDS = [b"ab\x00\x00", b"\x01\x00"]


def _save_model(target: Path) -> None:
    import tensorflow as tf

    class Records(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = tf.Variable(0.5)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="record")])
        def serve(self, record: tf.Tensor) -> dict[str, tf.Tensor]:
            last = tf.strings.substr(record, -1, 1)
            check = tf.debugging.assert_equal(
                last, tf.constant(b"\x00"), message="a record lost its trailing NUL byte")
            with tf.control_dependencies([check]):
                length = tf.cast(tf.strings.length(record), tf.float32)
            return {"scaled": tf.tanh(length * self.scale) + 1.0}

    module = Records()
    tf.saved_model.save(module, str(target), signatures={"serving_default": module.serve})


def test_string_inputs_keep_their_trailing_nul_bytes(embedded_stack: Stack, tmp_path: Path) -> None:
    import tensorflow as tf

    _save_model(tmp_path / "records")
    with Client(embedded_stack.url) as client:
        whole = client.compile(tmp_path / "records", example_inputs={"record": tf.constant(RECORDS)},
                               progress=False, cache=False)
        assert whole.status.value == "succeeded"
        report = json.loads(embedded_stack.download(whole.id, "report.json",
                                                    tmp_path / "report.json").read_text())
        assert report["inputs"] == {"record": {"dtype": "string", "shape": [2]}}
        assert report["numerical_check"]["within_tolerance"] is True
        # The same values as a NumPy bytes array: NumPy itself drops the NULs; the model says so.
        with pytest.raises(JobFailed) as failed:
            client.compile(tmp_path / "records", example_inputs={"record": np.array(RECORDS)},
                           progress=False, cache=False)
    assert failed.value.kind == "client_error"
    assert "a record lost its trailing NUL byte" in failed.value.reason
