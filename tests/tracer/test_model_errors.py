"""A model that raises its own error: the trace error carries TensorFlow's whole message."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import tensorflow as tf

import kiln_worker
from kiln_worker._failures import classify_exception
from kiln_worker.tracer.errors import (
    MAX_MESSAGE_CHARS,
    ModelExecutionError,
    TraceError,
    TraceInputError,
    model_error_text,
)

ASSERTION = "every input must exceed one hundred"


@tf.function
def _asserting(x):  # type: ignore[no-untyped-def]
    tf.debugging.assert_greater(x, 100.0, message=ASSERTION)
    return x * 2.0


@tf.function
def _runtime_reshape(x):  # type: ignore[no-untyped-def]
    # The batch axis is relaxed while tracing, so the shape is only wrong when it runs.
    return tf.reshape(x, [-1, 4]) + 1.0


@tf.function
def _static_reshape(x):  # type: ignore[no-untyped-def]
    return tf.reshape(x, [7, 5]) * 2.0


def _trace_error(fn, x) -> TraceError:  # type: ignore[no-untyped-def]
    with pytest.raises(TraceError) as info:
        kiln_worker.trace(fn, x)
    return info.value


def _assert_whole(message: str) -> None:
    assert "Graph execution error" not in message
    assert "/kiln_worker/" not in message  # Kiln's own frames are noise to the user


def test_a_failed_assertion_is_the_models_error_with_its_text() -> None:
    error = _trace_error(_asserting, np.ones((2, 3), np.float32))
    assert isinstance(error, ModelExecutionError) and error.pass_name == "inputs"
    message = str(error)
    for text in (ASSERTION, "assert_greater/Assert/AssertGuard/Assert", "InvalidArgumentError",
                 "Condition x > y did not hold", "test_model_errors.py"):
        assert text in message, (text, message)
    _assert_whole(message)
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is ModelExecutionError and str(clone) == message
    failure = classify_exception(error)
    assert failure is not None
    assert (failure.kind.value, failure.code.value) == ("client_error", "ModelError")
    assert ASSERTION in failure.message


def test_a_reshape_that_fails_when_run_is_the_models_error() -> None:
    error = _trace_error(_runtime_reshape, np.ones((1, 6), np.float32))
    assert isinstance(error, ModelExecutionError)
    for text in ("Reshape", "6 values", "requested shape requires a multiple of 4"):
        assert text in str(error), (text, str(error))
    _assert_whole(str(error))


def test_a_reshape_that_fails_when_traced_quotes_tensorflow() -> None:
    error = _trace_error(_static_reshape, np.ones((2, 3), np.float32))
    assert isinstance(error, TraceInputError)
    assert "Reshape" in str(error) and "[7,5]" in str(error) and "ValueError" in str(error)
    _assert_whole(str(error))
    failure = classify_exception(error)
    assert failure is not None and failure.kind.value == "client_error"


def test_model_error_text_keeps_user_frames_and_drops_internal_ones() -> None:
    raw = (
        "Graph execution error:\n\n"
        "Detected at node boom defined at (most recent call last):\n"
        '  File "/home/me/model.py", line 3, in call\n\n'
        '  File "/x/site-packages/kiln_worker/tracer/inputs.py", line 9, in flat_fn\n'
        "        secret_internal_source_line()\n\n"
        "my own words\n\t [[{{node boom}}]] [Op:__inference_f_1]"
    )
    text = model_error_text(RuntimeError(raw))
    assert text.startswith("RuntimeError: Detected at node boom:")
    assert "/home/me/model.py" in text and "my own words" in text and "{{node boom}}" in text
    assert "inputs.py" not in text and "secret_internal_source_line" not in text
    assert "Graph execution error" not in text
    long = model_error_text(ValueError("head " + "x" * 20_000 + " tail"))
    assert len(long) <= MAX_MESSAGE_CHARS + 3 and "head" in long and "tail" in long
