"""A saved traced model whose serving graph is one compiled call has its signatures compiled
whole (``tracer/serving_jit.py``); anything else keeps its wrappers as TensorFlow wrote them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.tracer.conftest import max_rel_diff, mlp


def _functions(saved_model_dir: Path) -> dict[str, Any]:
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((saved_model_dir / "saved_model.pb").read_bytes())
    return {f.signature.name: f for f in proto.meta_graphs[0].graph_def.library.function}


def _compiled(function: Any) -> bool:
    return "_XlaMustCompile" in function.attr and function.attr["_XlaMustCompile"].b


def _signature_wrappers(functions: dict[str, Any]) -> list[Any]:
    found = [f for n, f in functions.items() if n.startswith("__inference_signature_wrapper")]
    assert found, "no signature wrapper in saved_model.pb"
    return found


def _function(name: str, calls: list[str], ops: tuple[str, ...] = ("Identity",),
              compiled: bool | None = None) -> Any:
    from tensorflow.core.framework import function_pb2

    function = function_pb2.FunctionDef()
    function.signature.name = name
    for i, callee in enumerate(calls):
        node = function.node_def.add(name=f"call{i}", op="StatefulPartitionedCall")
        node.attr["f"].func.name = callee
    for i, op in enumerate(ops):
        function.node_def.add(name=f"op{i}", op=op)
    if compiled is not None:
        function.attr["_XlaMustCompile"].b = compiled
    return function


def test_wrappers_of_compiled_calls_and_nothing_else() -> None:
    from kiln_worker.tracer.serving_jit import wrappers_to_compile

    functions = {f.signature.name: f for f in [
        _function("body", [], ("MatMul",), compiled=True),
        _function("run", ["body"]),
        _function("keras_call", ["run"], ("Identity", "NoOp")),
        _function("signature", ["keras_call"], ("IdentityN",)),
        _function("report", [], ("Const",)),  # calls nothing
        _function("dispatch", ["run", "plain"], ("If",)),  # another op
        _function("plain", [], ("MatMul",)),
        _function("calls_plain", ["plain"]),  # calls an uncompiled function
        _function("told_not_to", ["body"], compiled=False),  # an explicit jit_compile=False
        _function("via_told_not_to", ["told_not_to"]),
        _function("missing", ["nowhere"]),  # calls a function that is not in the library
        _function("ping", ["pong"]),  # a call cycle
        _function("pong", ["ping"]),
    ]}
    assert wrappers_to_compile(functions) == ["keras_call", "run", "signature"]


@pytest.fixture(scope="module")
def saved_mlp(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import kiln_worker

    model = mlp()
    x = np.random.default_rng(3).normal(size=(1, 32)).astype("float32")
    traced = kiln_worker.trace(model, x, placement="all")
    directory = tmp_path_factory.mktemp("serving_jit") / "traced"
    traced.save(str(directory))
    return {"model": model, "dir": directory}


def test_a_wholly_compiled_model_saves_its_signature_compiled_whole(
    saved_mlp: dict[str, Any],
) -> None:
    import tensorflow as tf

    functions = _functions(saved_mlp["dir"])
    assert all(_compiled(f) for f in _signature_wrappers(functions))
    loaded = tf.saved_model.load(str(saved_mlp["dir"]))
    batch = np.random.default_rng(4).normal(size=(6, 32)).astype("float32")
    out = loaded.signatures["serving_default"](tf.constant(batch))
    assert max_rel_diff(saved_mlp["model"](batch), next(iter(out.values()))) < 1e-5
    # The fingerprint TensorFlow wrote hashes saved_model.pb: written again, it still agrees.
    from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting

    stored = tf.saved_model.experimental.read_fingerprint(str(saved_mlp["dir"]))
    fresh = tf.saved_model.experimental.Fingerprint.from_proto(
        _fingerprint_proto(fingerprinting.CreateFingerprintDef(str(saved_mlp["dir"]))))
    assert stored.saved_model_checksum == fresh.saved_model_checksum


def _fingerprint_proto(serialized: bytes) -> Any:
    from tensorflow.core.protobuf import fingerprint_pb2

    proto = fingerprint_pb2.FingerprintDef()
    proto.ParseFromString(serialized)
    return proto


def test_the_session_loader_runs_it_too(saved_mlp: dict[str, Any]) -> None:
    """TensorFlow Serving loads the MetaGraph into a session, not through tf.saved_model.load."""
    import tensorflow as tf

    batch = np.random.default_rng(5).normal(size=(3, 32)).astype("float32")
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"],
                                                          str(saved_mlp["dir"]))
        signature = meta_graph.signature_def["serving_default"]
        (feed,) = signature.inputs.values()
        (fetch,) = signature.outputs.values()
        out = session.run(fetch.name, {feed.name: batch})
    assert max_rel_diff(saved_mlp["model"](batch), out) < 1e-5


def test_a_model_with_cpu_ops_keeps_its_wrappers(tmp_path: Path) -> None:
    import tensorflow as tf

    import kiln_worker

    inputs = tf.keras.Input((8,))
    x = tf.keras.layers.Dense(16, activation="relu")(inputs)
    x = tf.keras.layers.Lambda(lambda t: tf.strings.to_number(tf.strings.as_string(t)))(x)
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(4)(x))
    x = np.ones((2, 8), np.float32)
    traced = kiln_worker.trace(model, x, placement="all")
    assert traced.report["subgraphs"], "the dense layers compile"
    traced.save(str(tmp_path / "traced"))
    functions = _functions(tmp_path / "traced")
    assert not any(_compiled(f) for f in _signature_wrappers(functions))
    assert any(_compiled(f) for f in functions.values())  # the subgraphs themselves are
    loaded = tf.saved_model.load(str(tmp_path / "traced"))
    out = loaded.signatures["serving_default"](tf.constant(x))
    assert max_rel_diff(model(x), next(iter(out.values()))) < 1e-5


def test_marking_needs_a_saved_model_pb_and_happens_once(tmp_path: Path,
                                                        saved_mlp: dict[str, Any]) -> None:
    from kiln_worker.tracer.serving_jit import compile_wrappers

    assert compile_wrappers(tmp_path) == []  # no saved_model.pb there: nothing to do
    assert compile_wrappers(saved_mlp["dir"]) == []  # already marked: nothing more to mark
