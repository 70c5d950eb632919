"""Every bad input gets a clear error; errors pickle and name their pass."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from kiln_worker.tracer.errors import (
    BackendUnavailableError,
    SubgraphCompileError,
    TraceError,
    TraceInputError,
    UnsupportedModelError,
)


@pytest.mark.parametrize(
    "error",
    [
        TraceError("boom", "compile", "kiln_subgraph_1"),
        TraceInputError("bad input", "inputs"),
        UnsupportedModelError("a table", "freeze"),
        SubgraphCompileError("xla says no", "compile", "kiln_subgraph_0"),
        BackendUnavailableError("install it", "backend"),
    ],
)
def test_errors_pickle_and_name_pass_and_subgraph(error: TraceError) -> None:
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is type(error)
    assert str(clone) == str(error)
    assert clone.pass_name == error.pass_name and clone.subgraph == error.subgraph
    assert error.pass_name in str(error)


def _double(x):  # type: ignore[no-untyped-def]
    return x * 2.0


def test_tuple_holding_a_dict_is_positional_arguments() -> None:
    """A tuple of (tensor, dict) is two positional arguments, the second a dict (tf.nest)."""
    import kiln_worker

    x = np.ones((1, 2), "float32")
    traced = kiln_worker.trace(lambda a, b: a + b["c"], (x, {"c": x}))
    np.testing.assert_array_equal(traced((x, {"c": x})).numpy(), x + x)


def test_keyword_only_function_needs_a_dict() -> None:
    import kiln_worker

    def func(a, *, scale):  # type: ignore[no-untyped-def]
        return a * scale

    with pytest.raises(TraceInputError, match="keyword-only"):
        kiln_worker.trace(func, (np.ones((1, 2), "float32"), np.ones((1, 2), "float32")))


def test_wrong_structure_is_reported() -> None:
    import kiln_worker

    def takes_two(a, b):  # type: ignore[no-untyped-def]
        return a + b

    with pytest.raises(TraceInputError, match="calling func with example_inputs failed"):
        kiln_worker.trace(takes_two, np.ones((1, 2), "float32"))


def test_non_tensor_example_input_rejected() -> None:
    import kiln_worker

    with pytest.raises(TraceInputError, match=r"use a tf\.Tensor or a numpy array"):
        kiln_worker.trace(_double, ["not a tensor"])


def test_non_callable_func_rejected() -> None:
    import kiln_worker

    with pytest.raises(TraceInputError, match="must be callable"):
        kiln_worker.trace(42, np.ones((1, 2), "float32"))


def test_non_tensor_output_rejected() -> None:
    import kiln_worker

    with pytest.raises(TraceInputError, match="must return a Tensor"):
        kiln_worker.trace(lambda x: "text", np.ones((1, 2), "float32"))


def test_a_table_the_function_writes_is_rejected() -> None:
    """Read-only tables are carried along (tests/tracer/test_zoo_flow.py); writes are refused."""
    import tensorflow as tf

    import kiln_worker

    table = tf.lookup.experimental.MutableHashTable(tf.int64, tf.float32, default_value=0.0)

    def func(ids):  # type: ignore[no-untyped-def]
        table.insert(ids, tf.cast(ids, tf.float32))
        return table.lookup(ids) * 2.0

    with pytest.raises(UnsupportedModelError, match="changes the lookup table") as info:
        kiln_worker.trace(func, tf.constant([[1, 2]], tf.int64))
    assert info.value.pass_name == "freeze"
    assert "LookupTableInsertV2" in str(info.value)


def test_unknown_flag_lists_known_flags() -> None:
    import kiln_worker

    with pytest.raises(TraceInputError, match="--workdir"):
        kiln_worker.trace(_double, np.ones((1, 2), "float32"), flags="--no-such-flag")


def test_bad_flag_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import kiln_worker

    monkeypatch.setenv("NEURON_CC_FLAGS", "--neuroncore-pipeline-cores=many")
    with pytest.raises(TraceInputError):
        kiln_worker.trace(_double, np.ones((1, 2), "float32"))


def test_unknown_backend_rejected() -> None:
    import kiln_worker

    with pytest.raises(BackendUnavailableError, match="xla"):
        kiln_worker.trace(_double, np.ones((1, 2), "float32"), backend="tpu")
