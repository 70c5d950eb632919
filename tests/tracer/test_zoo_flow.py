"""Control flow and lookup tables, in memory and through the SavedModel path the service takes.

Issue 9, points 4 and 5. Every model is tiny and goes through ``check_roundtrip``: traced in
memory, then saved → ``tf.saved_model.load`` → its serving signature traced → saved → reloaded
(``tf.saved_model.load`` and ``tf.keras.models.load_model``) from another directory with the
original deleted → served at another batch size. Outputs match the original within a relative
1e-3 (float32), the tolerance stated in ``roundtrip.RTOL_FLOAT32``.

Placement is ``all`` (every op XLA supports is compiled, no timing: tensorflow-neuron's
behaviour), so the placement assertions do not depend on the machine's load: a loop or numeric
part XLA can compile is in a compiled subgraph, one it cannot stays on CPU with the reason, and
table ops are CPU ops with the table reason. (The service's default, ``measured``, is exercised
by tests/integration/test_integration_zoo.py.)
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from tests.tracer.roundtrip import RoundTrip, assert_close, check_roundtrip

import kiln_worker
from kiln_worker.tracer.tables import TABLE_REASON

PLACEMENT = {"placement": "all"}
Build = Callable[[Path], tuple[Any, Any, Any]]


@dataclass(frozen=True)
class FlowCase:
    """One zoo model: ``build(tmp) -> (model, example_inputs, other_batch_inputs)``."""

    build: Build
    compiled_ops: tuple[str, ...] = ()  #: op types some compiled subgraph must hold
    cpu_ops: tuple[str, ...] = ()  #: op types that must stay on CPU
    table: bool = False  #: table ops listed as CPU ops with the table reason
    fresh_process: bool = False  #: the SavedModel leg in a new process (as the service)


def _rng() -> np.random.Generator:
    return np.random.default_rng(7)


def _sequences(mask_tail: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = _rng()
    x = rng.normal(size=(2, 6, 4)).astype("float32")
    other = rng.normal(size=(5, 6, 4)).astype("float32")
    if mask_tail:  # variable length: padded steps are all zero
        x[0, 3:] = 0.0
        other[1, 1:] = 0.0
        other[3, 4:] = 0.0
    return x, other


def _rnn(layer: Callable[[], Any], mask: bool = False) -> Build:
    def build(_: Path) -> tuple[Any, Any, Any]:
        inputs = tf.keras.Input((6, 4))
        x = tf.keras.layers.Masking()(inputs) if mask else inputs
        x = layer()(x)
        if len(x.shape) == 3:
            x = tf.keras.layers.GlobalAveragePooling1D()(x)
        model = tf.keras.Model(inputs, tf.keras.layers.Dense(3)(x))
        return (model, *_sequences(mask_tail=mask))

    return build


def _embedding_mask_zero(_: Path) -> tuple[Any, Any, Any]:
    inputs = tf.keras.Input((7,), dtype="int32")
    x = tf.keras.layers.Embedding(20, 5, mask_zero=True)(inputs)
    x = tf.keras.layers.LSTM(6)(x)
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(2)(x))
    rng = _rng()
    ids, other = rng.integers(1, 20, (2, 7)), rng.integers(1, 20, (4, 7))
    ids[0, 3:] = 0
    other[2, 1:] = 0
    return model, ids.astype("int32"), other.astype("int32")


class _Branches(tf.Module):  # type: ignore[misc]
    """A matmul whose result goes through branches chosen by the input (subclasses)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = tf.Variable(_rng().normal(size=(4, 3)).astype("float32"))


class _Cond(_Branches):
    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])  # type: ignore[misc]
    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        y = tf.matmul(x, self.w)
        return tf.cond(tf.reduce_mean(x) > 0.0, lambda: tf.nn.relu(y) * 2.0, lambda: tf.tanh(y))


class _Case(_Branches):
    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])  # type: ignore[misc]
    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        y = tf.matmul(x, self.w)
        branch = tf.cast(tf.abs(tf.reduce_mean(x)) * 7.0, tf.int32) % 3
        return tf.switch_case(branch, [lambda: y + 1.0, lambda: y * 3.0, lambda: tf.sigmoid(y)])


class _While(tf.Module):  # type: ignore[misc]
    """A hand-written loop whose trip count depends on the input."""

    def __init__(self, xla_can_compile: bool = True) -> None:
        super().__init__()
        self.w = tf.Variable(_rng().normal(size=(4, 4)).astype("float32") * 0.5)
        self.xla_can_compile = xla_can_compile

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])  # type: ignore[misc]
    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        steps = tf.cast(tf.reduce_max(tf.abs(x)) * 3.0, tf.int32) + 1

        def body(i: tf.Tensor, h: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            h = tf.tanh(tf.matmul(h, self.w) + x)
            if not self.xla_can_compile:  # strings have no XLA kernel: the loop stays on CPU
                text = tf.strings.as_string(tf.round(h * 4.0))
                h += tf.cast(tf.strings.length(text), tf.float32) * 0.01
            return i + 1, h

        return tf.while_loop(lambda i, h: i < steps, body, (tf.constant(0), x))[1]


def _module(factory: Callable[[], Any]) -> Build:
    def build(_: Path) -> tuple[Any, Any, Any]:
        rng = _rng()
        x = rng.normal(size=(2, 4)).astype("float32")
        return factory(), x, rng.normal(size=(5, 4)).astype("float32")

    return build


def _text_model(_: Path) -> tuple[Any, Any, Any]:
    vectorize = tf.keras.layers.TextVectorization(max_tokens=20, output_sequence_length=6)
    vectorize.adapt(tf.constant(["the cat sat", "the dog ran far", "a cat and a dog"]))
    inputs = tf.keras.Input((1,), dtype=tf.string)
    x = tf.keras.layers.Embedding(20, 4)(vectorize(inputs))
    x = tf.keras.layers.GlobalAveragePooling1D()(x)
    x = tf.keras.layers.Dense(8, activation="relu")(x)
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(2)(x))
    example = np.array([["the cat"], ["a dog ran"]])
    other = np.array([["The cat sat far!"], ["dog"], ["unknown words here"]])
    return model, example, other


def _wide_and_deep(_: Path) -> tuple[Any, Any, Any]:
    city = tf.keras.Input((1,), dtype=tf.string, name="city")
    code = tf.keras.Input((1,), dtype=tf.int64, name="code")
    tag = tf.keras.Input((1,), dtype=tf.string, name="tag")
    num = tf.keras.Input((2,), dtype=tf.float32, name="num")
    wide = tf.keras.layers.Concatenate()(
        [
            tf.keras.layers.StringLookup(
                vocabulary=["paris", "rome", "oslo"], output_mode="one_hot"
            )(city),
            tf.keras.layers.IntegerLookup(vocabulary=[10, 20, 30], output_mode="one_hot")(code),
            tf.keras.layers.Hashing(num_bins=5, output_mode="one_hot")(tag),
        ]
    )
    deep = tf.keras.layers.Dense(8, activation="relu")(tf.keras.layers.Concatenate()([wide, num]))
    deep = tf.keras.layers.Dense(4, activation="relu")(deep)
    out = tf.keras.layers.Dense(1)(tf.keras.layers.Concatenate()([wide, deep]))
    model = tf.keras.Model({"city": city, "code": code, "tag": tag, "num": num}, out)
    rng = _rng()

    def features(cities: list[str], codes: list[int], tags: list[str]) -> dict[str, np.ndarray]:
        return {
            "city": np.array(cities)[:, None],
            "code": np.array(codes, dtype=np.int64)[:, None],
            "tag": np.array(tags)[:, None],
            "num": rng.normal(size=(len(cities), 2)).astype("float32"),
        }

    example = features(["paris", "nyc"], [20, 99], ["u", "v"])
    return model, example, features(["rome", "oslo", "lima"], [10, 30, 0], ["a", "b", "c"])


class _TableModel(tf.Module):  # type: ignore[misc]
    """Words → ids through a tf.lookup table, then an embedding and a dense layer."""

    def __init__(self, table: Any, ids: int) -> None:
        super().__init__()
        rng = _rng()
        self.table = table
        self.embedding = tf.Variable(rng.normal(size=(ids, 3)).astype("float32"))
        self.w = tf.Variable(rng.normal(size=(3, 2)).astype("float32"))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])  # type: ignore[misc]
    def __call__(self, words: tf.Tensor) -> tf.Tensor:
        ids = self.table.lookup(words)
        return tf.tanh(tf.matmul(tf.gather(self.embedding, ids), self.w) * 2.0 + 1.0)


_WORDS = (np.array([b"apple", b"fig", b"nope"]), np.array([b"plum", b"zzz", b"banana", b"fig"]))


def _table_from_tensors(_: Path) -> tuple[Any, Any, Any]:
    keys = tf.constant(["apple", "banana", "cherry", "plum", "fig"])
    init = tf.lookup.KeyValueTensorInitializer(keys, tf.range(1, 6, dtype=tf.int64))
    return _TableModel(tf.lookup.StaticHashTable(init, default_value=0), 6), *_WORDS


def _vocabulary_file(directory: Path) -> Path:
    path = directory / "vocab.txt"
    path.write_text("apple\nbanana\ncherry\nplum\nfig\n")
    return path


def _table_from_asset(tmp: Path) -> tuple[Any, Any, Any]:
    init = tf.lookup.TextFileInitializer(
        str(_vocabulary_file(tmp)),
        tf.string,
        tf.lookup.TextFileIndex.WHOLE_LINE,
        tf.int64,
        tf.lookup.TextFileIndex.LINE_NUMBER,
    )
    return _TableModel(tf.lookup.StaticVocabularyTable(init, num_oov_buckets=2), 7), *_WORDS


CASES = {
    "lstm": FlowCase(
        _rnn(lambda: tf.keras.layers.LSTM(8)), compiled_ops=("While",), fresh_process=True
    ),
    "gru": FlowCase(_rnn(lambda: tf.keras.layers.GRU(8, return_sequences=True)), ("While",)),
    "simple_rnn": FlowCase(_rnn(lambda: tf.keras.layers.SimpleRNN(8)), ("While",)),
    "bidirectional_lstm": FlowCase(
        _rnn(lambda: tf.keras.layers.Bidirectional(tf.keras.layers.LSTM(5))), ("While",)
    ),
    "variable_length_masking_gru": FlowCase(
        _rnn(lambda: tf.keras.layers.GRU(6), mask=True), ("While",)
    ),
    "variable_length_mask_zero_lstm": FlowCase(_embedding_mask_zero, ("While",)),
    "tf_cond": FlowCase(_module(_Cond), ("If",)),
    "tf_case": FlowCase(_module(_Case), ("Case",)),
    "tf_while_loop": FlowCase(_module(_While), ("While",)),
    "tf_while_loop_cpu": FlowCase(
        _module(lambda: _While(xla_can_compile=False)), cpu_ops=("While",)
    ),
    "text_vectorization": FlowCase(_text_model, ("MatMul",), table=True),
    "wide_and_deep_lookups": FlowCase(_wide_and_deep, ("MatMul",), table=True),
    "static_hash_table_tensors": FlowCase(_table_from_tensors, ("MatMul",), table=True),
    "static_table_asset_file": FlowCase(
        _table_from_asset, ("MatMul",), table=True, fresh_process=True
    ),
}


def _compiled_op_types(report: dict[str, Any]) -> set[str]:
    """Op types in compiled subgraphs; ``StatelessWhile`` also counts as ``While`` (and so on)."""
    ops = {op for s in report["subgraphs"] if s["status"] == "compiled" for op in s["op_types"]}
    return ops | {op.removeprefix("Stateless") for op in ops}


def _assert_placement(label: str, case: FlowCase, report: dict[str, Any]) -> None:
    compiled = _compiled_op_types(report)
    for op in case.compiled_ops:
        assert op in compiled, f"{label}: no compiled subgraph holds {op}: {report['subgraphs']}"
    cpu = {c["op"]: c["reason"] for c in report["cpu_ops"]}
    for op in case.cpu_ops:
        assert op in cpu and op not in compiled, f"{label}: {op} should stay on CPU"
        assert "AsString" in cpu[op], cpu[op]  # the reason names the op XLA cannot compile
    if case.table:
        tables = {c["op"]: c["reason"] for c in report["cpu_ops"] if "LookupTable" in c["op"]}
        assert "LookupTableFindV2" in tables, f"{label}: no table op in {report['cpu_ops']}"
        assert set(tables.values()) == {TABLE_REASON}, tables


@pytest.mark.parametrize("name", list(CASES))
def test_flow_model_round_trips(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    model, example, other = case.build(tmp_path)
    result: RoundTrip = check_roundtrip(
        model, example, other, tmp_path, fresh_process=case.fresh_process, trace_kwargs=PLACEMENT
    )
    _assert_placement("in memory", case, result.in_memory_report)
    _assert_placement("saved model", case, result.saved_report)


def test_asset_table_survives_its_file(tmp_path: Path) -> None:
    """Traced in memory, the vocabulary file deleted, saved, moved, reloaded: still the same."""
    model, example, other = _table_from_asset(tmp_path)
    expected = model(tf.constant(other))
    traced = kiln_worker.trace(model, example, **PLACEMENT)
    (tmp_path / "vocab.txt").unlink()
    traced.save(str(tmp_path / "traced"))
    shutil.move(str(tmp_path / "traced"), str(tmp_path / "elsewhere"))
    reloaded = tf.saved_model.load(str(tmp_path / "elsewhere"))
    served = reloaded.signatures["serving_default"](tf.constant(other))
    assert_close("asset table", expected, next(iter(served.values())), rtol=1e-3)
    keras_model = tf.keras.models.load_model(str(tmp_path / "elsewhere"))
    assert_close("asset table (keras)", expected, keras_model(tf.constant(other)), rtol=1e-3)
