"""Issue 9, points 1, 2, 3 and 6: every input, dtype and graph shape a user has, on the user's path.

Each model goes through ``check_roundtrip`` (tests/tracer/roundtrip.py): traced in memory, then
saved → ``tf.saved_model.load`` → its serving signature traced → saved → reloaded → served at
another batch, each time matching the original. Inputs a SavedModel signature cannot take (nests)
are checked in memory and through the traced model's own save and reload.

Tolerances, relative to the largest output magnitude: 1e-3 for float32 and float64 (the issue's
criterion), 2e-2 for float16 (11 significant bits) and 6e-2 for bfloat16 (8 significant bits):
``RTOL_FLOAT32``, ``RTOL_FLOAT16`` and ``RTOL_BFLOAT16`` of the harness. Integer, bool and string
outputs must be equal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf
from tests.tracer.roundtrip import (
    RTOL_BFLOAT16,
    RTOL_FLOAT16,
    RTOL_FLOAT32,
    assert_close,
    check_roundtrip,
    serve_saved,
)

import kiln_worker
from kiln_worker.tracer.errors import TraceInputError
from kiln_worker.tracer.inputs import leaf_dtype

RNG = np.random.default_rng(9)


def _uniform(*shape: int, dtype: Any = "float32") -> np.ndarray:
    return RNG.uniform(-1.0, 1.0, size=shape).astype(dtype)


@contextlib.contextmanager
def _policy(name: str) -> Iterator[None]:
    """A Keras dtype policy for the whole test (built, traced, saved and reloaded under it)."""
    tf.keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")


def _dense_model(dtype: str) -> Any:
    inputs = tf.keras.Input(16, dtype=dtype)
    hidden = tf.keras.layers.Dense(32, activation="relu", dtype=dtype)(inputs)
    return tf.keras.Model(inputs, tf.keras.layers.Dense(8, dtype=dtype)(hidden))


def _mixed_precision_model() -> Any:
    """Built under the current (mixed) policy: float16/bfloat16 compute, float32 output."""
    inputs = tf.keras.Input((8, 8, 3))
    x = tf.keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    x = tf.keras.layers.Dense(16, activation="relu")(x)
    return tf.keras.Model(inputs, tf.keras.layers.Dense(4, dtype="float32")(x))


class _Signature(tf.Module):
    """A tf.Module whose ``__call__`` is one tf.function with an input signature (a SavedModel
    saved from it has that function as ``serving_default``).

    Input names sort in positional order: the harness keys positional inputs by sorted name.
    """

    def __init__(self, fn: Callable[..., Any], signature: list[tf.TensorSpec]) -> None:
        super().__init__()
        self.__call__ = tf.function(fn, input_signature=signature)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:  # the instance's tf.function
        return self.__dict__["__call__"](*args, **kwargs)


def _mixed_dtypes_module() -> _Signature:
    weights = tf.constant(_uniform(4, 4))

    def fn(x: tf.Tensor, ids: tf.Tensor, mask: tf.Tensor, words: tf.Tensor) -> dict[str, Any]:
        scaled = tf.matmul(x, weights) * tf.cast(ids, tf.float32)
        kept = tf.where(mask, tf.nn.relu(scaled) + 1.0, 0.0)
        lengths = tf.cast(tf.strings.length(words), tf.float32)[:, None]
        return {"y": kept + lengths, "ids": ids * 2 + 1, "shout": tf.strings.upper(words)}

    return _Signature(
        fn,
        [
            tf.TensorSpec([None, 4], tf.float32, name="a_x"),
            tf.TensorSpec([None, 4], tf.int8, name="b_ids"),
            tf.TensorSpec([None, 4], tf.bool, name="c_mask"),
            tf.TensorSpec([None], tf.string, name="d_words"),
        ],
    )


def _mixed_dtypes_inputs(batch: int) -> tuple[Any, ...]:
    words = np.array([b"kiln", b"fire", b"clay", b"glaze"][:batch] * (batch // 4 + 1))[:batch]
    return (
        _uniform(batch, 4),
        RNG.integers(-3, 4, size=(batch, 4)).astype("int8"),
        RNG.random((batch, 4)) < 0.5,
        words,
    )


def _int_widths_module() -> _Signature:
    def fn(a: tf.Tensor, b: tf.Tensor, c: tf.Tensor, d: tf.Tensor) -> dict[str, Any]:
        total = tf.cast(a, tf.int64) + tf.cast(b, tf.int64) + tf.cast(c, tf.int64) + d
        return {"total": total, "scaled": tf.cast(total, tf.float32) * 0.5 + 1.0}

    specs = [("a", tf.uint8), ("b", tf.int16), ("c", tf.int32), ("d", tf.int64)]
    return _Signature(fn, [tf.TensorSpec([None, 3], t, name=n) for n, t in specs])


def _int_widths_inputs(batch: int) -> tuple[Any, ...]:
    dtypes = ("uint8", "int16", "int32", "int64")
    return tuple(RNG.integers(0, 50, size=(batch, 3)).astype(d) for d in dtypes)


def _dict_model() -> Any:
    left, right = tf.keras.Input(6, name="left"), tf.keras.Input(3, name="right")
    merged = tf.keras.layers.Concatenate()([left, right])
    hidden = tf.keras.layers.Dense(12, activation="tanh")(merged)
    outputs = {"score": tf.keras.layers.Dense(1)(hidden), "embedding": tf.keras.layers.Dense(4)(hidden)}
    return tf.keras.Model({"left": left, "right": right}, outputs)


def _nchw_conv_model() -> Any:
    inputs = tf.keras.Input((3, 16, 16))
    x = tf.keras.layers.Conv2D(8, 3, data_format="channels_first", activation="relu")(inputs)
    x = tf.keras.layers.Conv2D(8, 3, data_format="channels_first")(x)
    return tf.keras.Model(inputs, tf.keras.layers.GlobalAveragePooling2D("channels_first")(x))


def _unused_input_model() -> Any:
    used, unused = tf.keras.Input(5, name="a_used"), tf.keras.Input(2, name="b_unused")
    hidden = tf.keras.layers.Dense(8, activation="relu")(used)
    return tf.keras.Model([used, unused], tf.keras.layers.Dense(3)(hidden))


def _graph_shapes_module() -> _Signature:
    """A passthrough input, an output repeated under two names and a constant output."""
    weights = tf.constant(_uniform(4, 4))

    def fn(a: tf.Tensor, b: tf.Tensor) -> dict[str, Any]:
        y = tf.nn.relu(tf.matmul(a, weights)) * 3.0 + 1.0
        return {"y": y, "y_again": y, "b": b, "table": tf.constant([1.0, 2.0, 3.0])}

    return _Signature(fn, [tf.TensorSpec([None, 4], tf.float32, name="a"),
                           tf.TensorSpec([None, 2], tf.float32, name="b")])


def _attention_model() -> Any:
    inputs = tf.keras.Input((6, 16))
    attended = tf.keras.layers.MultiHeadAttention(num_heads=2, key_dim=8)(inputs, inputs)
    x = tf.keras.layers.LayerNormalization()(inputs + attended)
    ff = tf.keras.layers.Dense(16)(tf.keras.layers.Dense(32, activation="gelu")(x))
    return tf.keras.Model(inputs, tf.keras.layers.LayerNormalization()(x + ff))


def _conv_net() -> Any:
    return tf.keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3), weights=None, classes=10, include_preprocessing=False,
        minimalistic=True,
    )


@dataclasses.dataclass(frozen=True)
class Case:
    """A model, its example inputs, inputs at another batch, the tolerance and the dtype policy."""

    build: Callable[[], Any]
    example: Callable[[], Any]
    other: Callable[[], Any]
    rtol: float = RTOL_FLOAT32
    policy: str = "float32"
    trace_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    in_memory: bool = True  # off for the slowest model: the SavedModel leg is the service's path


#: every op the backend takes on the accelerator (no timing): for models measured slowly
ALL_OPS = {"subgraph_builder_function": lambda node: True}

CASES: dict[str, Case] = {
    "float16_model": Case(
        lambda: _dense_model("float16"),
        lambda: _uniform(2, 16, dtype="float16"),
        lambda: _uniform(3, 16, dtype="float16"),
        RTOL_FLOAT16,
    ),
    "bfloat16_model": Case(
        lambda: _dense_model("bfloat16"),
        lambda: tf.constant(_uniform(2, 16), tf.bfloat16),
        lambda: tf.constant(_uniform(3, 16), tf.bfloat16),
        RTOL_BFLOAT16,
    ),
    "float64_model": Case(
        lambda: _dense_model("float64"),
        lambda: _uniform(2, 16, dtype="float64"),
        lambda: _uniform(3, 16, dtype="float64"),
    ),
    "mixed_float16": Case(
        _mixed_precision_model,
        lambda: _uniform(2, 8, 8, 3),
        lambda: _uniform(3, 8, 8, 3),
        RTOL_FLOAT16,
        policy="mixed_float16",
    ),
    "mixed_bfloat16": Case(
        _mixed_precision_model,
        lambda: _uniform(2, 8, 8, 3),
        lambda: _uniform(3, 8, 8, 3),
        RTOL_BFLOAT16,
        policy="mixed_bfloat16",
    ),
    "float_int_bool_string_inputs": Case(
        _mixed_dtypes_module,
        lambda: _mixed_dtypes_inputs(2),
        lambda: _mixed_dtypes_inputs(3),
    ),
    "integer_widths": Case(
        _int_widths_module,
        lambda: _int_widths_inputs(2),
        lambda: _int_widths_inputs(3),
    ),
    "dict_inputs_and_outputs": Case(
        _dict_model,
        lambda: {"left": _uniform(2, 6), "right": _uniform(2, 3)},
        lambda: {"left": _uniform(3, 6), "right": _uniform(3, 3)},
    ),
    "nchw_convolution": Case(
        _nchw_conv_model,
        lambda: _uniform(1, 3, 16, 16),
        lambda: _uniform(2, 3, 16, 16),
    ),
    "unused_input": Case(
        _unused_input_model,
        lambda: [_uniform(2, 5), _uniform(2, 2)],
        lambda: [_uniform(3, 5), _uniform(3, 2)],
    ),
    "passthrough_repeated_constant_outputs": Case(
        _graph_shapes_module,
        lambda: (_uniform(2, 4), _uniform(2, 2)),
        lambda: (_uniform(3, 4), _uniform(3, 2)),
    ),
    "attention_block": Case(
        _attention_model,
        lambda: _uniform(2, 6, 16),
        lambda: _uniform(3, 6, 16),
        trace_kwargs=ALL_OPS,
    ),
    "mobilenet_v3_small": Case(
        _conv_net,
        lambda: _uniform(1, 32, 32, 3),
        lambda: _uniform(2, 32, 32, 3),
        trace_kwargs=ALL_OPS,
        in_memory=False,
    ),
}


def _dtypes(structure: Any) -> list[str]:
    return [leaf_dtype(np.asarray(x)).name for x in tf.nest.flatten(structure)]


@pytest.mark.parametrize("name", list(CASES))
def test_model_round_trips_and_matches(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    with _policy(case.policy):
        example_inputs = case.example()
        result = check_roundtrip(case.build(), example_inputs, case.other(), tmp_path,
                                 rtol=case.rtol, trace_kwargs=case.trace_kwargs,
                                 in_memory=case.in_memory)
    for report in (result.in_memory_report, result.saved_report) if case.in_memory else (
            result.saved_report,):
        assert report["numerical_check"]["within_tolerance"], report["numerical_check"]
        assert report["verify"]["reference"] == "tensorflow"
    # The saved traced model's signature takes exactly the example inputs' dtypes.
    saved = result.saved_signature_inputs
    wanted = sorted(_dtypes(example_inputs))
    assert sorted(t.dtype.name for t in saved.values()) == wanted


def test_float16_model_signature_keeps_float16(tmp_path: Path) -> None:
    model = _dense_model("float16")
    x = _uniform(2, 16, dtype="float16")
    traced = kiln_worker.trace(model, x)
    assert traced.report["ops_on_accelerator"] > 0
    traced.save(str(tmp_path / "traced"))
    serving = tf.saved_model.load(str(tmp_path / "traced")).signatures["serving_default"]
    (spec,) = serving.structured_input_signature[1].values()
    assert spec.dtype == tf.float16 and spec.shape.as_list() == [None, 16]
    (out,) = serving(**{next(iter(serving.structured_input_signature[1])): tf.constant(x)}).values()
    assert out.dtype == tf.float16
    assert_close("float16 served", model(x), out, RTOL_FLOAT16)


def _nested(a: Any, pair: Any, options: Any) -> Any:
    first, second = pair
    return {
        "mixed": tf.nn.relu(a @ options["w"] + first) * tf.cast(options["k"], tf.float32),
        "rows": tf.reduce_sum(second, axis=1),
    }


def test_nested_example_inputs_tuple_holding_a_list_and_a_dict(tmp_path: Path) -> None:
    def inputs(batch: int) -> tuple[Any, ...]:
        return (
            _uniform(batch, 4),
            [_uniform(batch, 4), _uniform(batch, 3)],
            {"w": _uniform(4, 4), "k": np.int32(3)},
        )

    example, other = inputs(2), inputs(5)
    example[2]["w"] = other[2]["w"]  # weights are not batched: the same at both batches
    traced = kiln_worker.trace(_nested, example, **ALL_OPS)
    assert traced.report["ops_on_accelerator"] > 0
    assert_close("nested, in memory", _nested(*example), traced(example), RTOL_FLOAT32)
    traced.save(str(tmp_path / "traced"))
    reloaded = tf.keras.models.load_model(str(tmp_path / "traced"))
    assert_close("nested, reloaded, batch 5", _nested(*other), reloaded(other), RTOL_FLOAT32)


def test_list_holding_a_tuple_is_passed_whole() -> None:
    def func(x: Any) -> Any:
        (a, b), c = x
        return [a * b, tf.matmul(c, c) + 1.0]

    example = [(_uniform(3, 3), _uniform(3, 3)), _uniform(3, 3)]
    traced = kiln_worker.trace(func, example)
    assert_close("list holding a tuple", func(example), traced(example), RTOL_FLOAT32)


def _conv_nchw_float16() -> _Signature:
    """A float16 NCHW convolution and average pooling: TensorFlow has no CPU kernel for the
    pooling (oneDNN, on CPUs where it is on, runs only the convolution), XLA compiles both."""
    kernel = tf.constant(_uniform(3, 3, 4, 8, dtype="float16"))

    def fn(x: tf.Tensor) -> dict[str, Any]:
        conv = tf.nn.conv2d(x, kernel, 1, "SAME", data_format="NCHW")
        pooled = tf.nn.avg_pool2d(tf.nn.relu(conv), 2, 2, "VALID", data_format="NCHW")
        return {"y": pooled * 0.5}

    return _Signature(fn, [tf.TensorSpec([None, 4, 8, 8], tf.float16, name="x")])


def test_function_without_cpu_kernels_traces_against_an_xla_reference(tmp_path: Path) -> None:
    module = _conv_nchw_float16()
    x, x_other = _uniform(1, 4, 8, 8, dtype="float16"), _uniform(3, 4, 8, 8, dtype="float16")
    with pytest.raises(tf.errors.InvalidArgumentError, match="only supports NHWC"):
        module(x)  # the premise: TensorFlow's CPU kernels cannot run it
    xla = tf.function(module.__call__, jit_compile=True)
    traced = kiln_worker.trace(module.__call__, x)
    report = traced.report
    assert report["verify"]["reference"] == "xla"
    assert "NHWC" in report["verify"]["reason"]
    assert report["numerical_check"]["within_tolerance"]
    assert [s["status"] for s in report["subgraphs"]] == ["compiled"]
    assert_close("in memory", xla(x), traced(x), RTOL_FLOAT16)
    tf.saved_model.save(module, str(tmp_path / "original"))
    got = serve_saved(tmp_path / "original", tmp_path / "traced", {"x": tf.constant(x)},
                      {"x": tf.constant(x_other)}, {})
    assert got["report"]["verify"]["reference"] == "xla"
    assert_close("served", xla(x), got["served"], RTOL_FLOAT16)
    assert_close("served at batch 3", xla(x_other), got["served_other"], RTOL_FLOAT16)


def test_chosen_signature_of_a_multi_signature_saved_model(tmp_path: Path) -> None:
    module = tf.Module()
    module.weights = tf.Variable(_uniform(4, 2))
    module.scores = tf.function(lambda x: {"scores": tf.nn.softmax(x @ module.weights)},
                                input_signature=[tf.TensorSpec([None, 4], name="x")])
    module.logits = tf.function(lambda x: {"logits": tf.matmul(x, module.weights) * 2.0 + 1.0},
                                input_signature=[tf.TensorSpec([None, 4], name="x")])
    signatures = {"serving_default": module.scores, "logits": module.logits}
    tf.saved_model.save(module, str(tmp_path / "original"), signatures=signatures)
    loaded = tf.saved_model.load(str(tmp_path / "original"))
    x = _uniform(2, 4)
    traced = kiln_worker.trace(loaded.signatures["logits"], {"x": x})
    out = traced({"x": x})
    assert set(out) == {"logits"}
    assert_close("logits signature", module.logits(x), out, RTOL_FLOAT32)


def test_function_with_no_compilable_op_works_and_says_why(tmp_path: Path) -> None:
    def func(words: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"length": tf.strings.length(words), "joined": tf.strings.join([words, words])}

    words = np.array([b"kiln", b"a", b"glaze"])
    traced = kiln_worker.trace(func, words)
    report = traced.report
    assert report["ops_on_accelerator"] == 0
    assert "no subgraph" in report["nothing_compiled"], report["nothing_compiled"]
    assert_close("string function", func(words), traced(words), RTOL_FLOAT32)
    traced.save(str(tmp_path / "traced"))
    reloaded = tf.keras.models.load_model(str(tmp_path / "traced"))
    more = np.array([b"x", b"yy", b"zzz", b"wwww"])
    assert_close("string function reloaded", func(more), reloaded(more), RTOL_FLOAT32)


def test_compiled_model_says_nothing_about_nothing_compiled() -> None:
    traced = kiln_worker.trace(_dense_model("float32"), _uniform(2, 16),
                               subgraph_builder_function=lambda node: True)
    assert traced.report["nothing_compiled"] is None


def test_ragged_example_input_is_refused_with_what_to_do() -> None:
    ragged = tf.ragged.constant([[1.0, 2.0], [3.0]])
    with pytest.raises(TraceInputError, match=r"example input #1 is a tf\.RaggedTensor.*to_tensor"):
        kiln_worker.trace(lambda a, b: a + b.to_tensor(), (tf.ones([2, 2]), ragged))


def test_sparse_example_input_is_refused_with_what_to_do() -> None:
    sparse = tf.sparse.from_dense(tf.eye(3))
    with pytest.raises(TraceInputError, match=r"example input 'ids' is a tf\.SparseTensor.*to_dense"):
        kiln_worker.trace(lambda ids: tf.sparse.to_dense(ids) * 2.0, {"ids": sparse})


def test_composite_outputs_are_refused_naming_the_output() -> None:
    def ragged_out(x: tf.Tensor) -> dict[str, Any]:
        return {"dense": x * 2.0, "rows": tf.RaggedTensor.from_tensor(x, padding=0.0)}

    with pytest.raises(TraceInputError, match=r"output 'rows' is a tf\.RaggedTensor.*to_tensor"):
        kiln_worker.trace(ragged_out, _uniform(2, 3))

    def sparse_out(x: tf.Tensor) -> Any:
        return [x, tf.sparse.from_dense(x)]

    with pytest.raises(TraceInputError, match=r"output '1' is a tf\.SparseTensor.*to_dense"):
        kiln_worker.trace(sparse_out, _uniform(2, 3))
