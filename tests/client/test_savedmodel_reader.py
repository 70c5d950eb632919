"""Kiln's one SavedModel reader against TensorFlow's own protobuf classes, and fuzzed.

The reader (``kiln_client._savedmodel``) must give what ``saved_model_pb2`` gives for real models
(a Keras MLP, a conv net, an RNN, string inputs, several signatures with many dtypes and open
shapes), and on any bytes (random, or a real file mutated) either a result or its own
``ProtoDecodeError``: never another exception, never a hang. The service's reading (the same
reader plus the op scan) is fuzzed the same way.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _support.processes import quiet_env, run_script
from kiln_client._savedmodel import MetaGraph, ProtoDecodeError, parse_saved_model, signature_inputs
from kiln_service._savedmodel_proto import parse_saved_model as service_parse

HERE = Path(__file__).resolve().parent
KINDS = ("mlp", "conv", "rnn", "strings", "multi")
#: a parse of these small files takes milliseconds; far longer means a loop that does not advance
HANG_SECONDS = 20


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reader_models")
    run_script(HERE / "_build_reader_models.py", str(out))
    return out


@pytest.fixture(scope="module")
def models(model_dir: Path) -> dict[str, bytes]:
    return {kind: (model_dir / kind / "saved_model.pb").read_bytes() for kind in KINDS}


_TF_VIEW = """
import json, sys
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import dtypes

def dtype(d):
    try:
        return dtypes.as_dtype(d).name
    except TypeError:  # DT_INVALID (0) or an enum value TensorFlow does not know
        return f"unknown({d})"

def spec(t):
    s = t.tensor_shape
    known = t.HasField("tensor_shape") and not s.unknown_rank
    shape = [None if d.size < 0 else d.size for d in s.dim] if known else None
    return {"name": t.name, "dtype": dtype(t.dtype), "shape": shape}

def view(path):
    sm = saved_model_pb2.SavedModel()
    with open(path, "rb") as f:
        sm.ParseFromString(f.read())
    return [{"tags": list(m.meta_info_def.tags), "signatures": {k: {
        "method_name": v.method_name,
        "inputs": {n: spec(t) for n, t in v.inputs.items()},
        "outputs": {n: spec(t) for n, t in v.outputs.items()}}
        for k, v in m.signature_def.items()}} for m in sm.meta_graphs]

print(json.dumps({p: view(p) for p in sys.argv[1:]}))
"""


def _tensorflow_views(paths: list[Path]) -> dict[str, list[dict[str, Any]]]:
    """What TensorFlow's own protobuf classes read, in the reader's terms (in a subprocess, so
    the test process does not load TensorFlow)."""
    proc = subprocess.run([sys.executable, "-c", _TF_VIEW, *map(str, paths)], capture_output=True,
                          text=True, env=quiet_env(), timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    views: dict[str, list[dict[str, Any]]] = json.loads(proc.stdout)
    return views


def _kiln_view(metas: list[MetaGraph]) -> list[dict[str, Any]]:
    def spec(t: Any) -> dict[str, Any]:
        return {"name": t.name, "dtype": t.dtype,
                "shape": None if t.shape is None else list(t.shape)}

    return [{"tags": m.tags, "signatures": {k: {
        "method_name": s.method_name,
        "inputs": {n: spec(t) for n, t in s.inputs.items()},
        "outputs": {n: spec(t) for n, t in s.outputs.items()}}
        for k, s in m.signatures.items()}} for m in metas]


def test_the_reader_agrees_with_tensorflows_protobuf_classes(
    model_dir: Path, models: dict[str, bytes]
) -> None:
    paths = {kind: model_dir / kind / "saved_model.pb" for kind in KINDS}
    theirs = _tensorflow_views(list(paths.values()))
    seen_dtypes: set[str] = set()
    for kind, data in models.items():
        ours = _kiln_view(parse_saved_model(data))
        assert ours == theirs[str(paths[kind])], kind
        assert _kiln_view(service_parse(data)) == ours, kind
        seen_dtypes |= {t["dtype"] for m in ours for s in m["signatures"].values()
                        for t in [*s["inputs"].values(), *s["outputs"].values()]}
    # the models exercise what matters: several dtypes, an unknown rank, several signatures
    assert {"float32", "float64", "int32", "int64", "bool", "string", "float16", "uint8"} <= seen_dtypes
    multi = parse_saved_model(models["multi"])[0].signatures
    assert {"serving_default", "mixed"} <= set(multi)
    assert multi["mixed"].inputs["anything"].shape is None
    assert multi["mixed"].inputs["ids"].shape == (2, None, 3)
    assert signature_inputs(models["multi"])["mixed"] == ["anything", "byte", "flag", "half", "ids"]
    assert signature_inputs(models["strings"])["serving_default"] == ["numbers", "text"]


@contextmanager
def _no_hang() -> Iterator[None]:
    def hung(signum: int, frame: Any) -> None:
        raise AssertionError(f"the reader did not finish within {HANG_SECONDS} s: a hang")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(HANG_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _only_its_own_error(parse: Callable[[bytes], Any], data: bytes) -> None:
    with _no_hang(), suppress(ProtoDecodeError):
        parse(data)


_FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture,
                                        HealthCheck.too_slow, HealthCheck.data_too_large])


@_FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_give_a_result_or_the_readers_error(data: bytes) -> None:
    _only_its_own_error(parse_saved_model, data)
    _only_its_own_error(service_parse, data)


@pytest.mark.parametrize("kind", ["mlp", "strings", "multi"])
def test_mutated_real_files_give_a_result_or_the_readers_error(
    models: dict[str, bytes], kind: str
) -> None:
    original = models[kind]

    @_FUZZ
    @given(st.lists(st.tuples(st.integers(0, len(original) - 1), st.integers(0, 255)),
                    min_size=1, max_size=8),
           st.integers(0, len(original)), st.binary(max_size=16))
    def mutate(flips: list[tuple[int, int]], cut: int, tail: bytes) -> None:
        data = bytearray(original)
        for pos, byte in flips:
            data[pos] = byte
        mutated = bytes(data[:cut]) + tail
        _only_its_own_error(parse_saved_model, mutated)
        _only_its_own_error(service_parse, mutated)
        _only_its_own_error(signature_inputs, mutated)

    mutate()
