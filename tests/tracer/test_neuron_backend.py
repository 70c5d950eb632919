"""The `neuron` backend: delegation to AWS's tensorflow.neuron.trace.

AWS's compiler cannot be installed here (it is on AWS's own index, for Python 3.10 / TF 2.10), so
the delegation tests install a FAKE `tensorflow.neuron` module and say so in their names.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kiln_client.flags import CompilerFlags, parse_flags
from kiln_worker.tracer.backends import neuron as neuron_backend
from kiln_worker.tracer.backends.neuron import (
    INSTALL_COMMAND,
    neuron_available,
    trace_with_neuron,
)
from kiln_worker.tracer.errors import BackendUnavailableError, TraceError

ENV = "NEURON_CC_FLAGS"


def _really_installed() -> bool:
    try:
        return importlib.util.find_spec("tensorflow_neuron") is not None
    except (ImportError, ValueError):
        return False


class _FakeModel:
    """Stands in for the keras.Model tensorflow-neuron returns."""

    def __init__(self, ratio: float | None) -> None:
        if ratio is not None:
            self.on_neuron_ratio = ratio


@pytest.fixture
def fake_neuron(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.SimpleNamespace]:
    """Install a fake `tensorflow.neuron` whose trace records what it was given."""
    record = types.SimpleNamespace(calls=[], ratio=0.75, error=None, result=None, pause=0.0)

    def trace(func: Any, example_inputs: Any, subgraph_builder_function: Any = None) -> Any:
        seen_at_start = os.environ.get(ENV)
        time.sleep(record.pause)  # lets concurrent callers overlap in the threading test
        record.calls.append(
            {"func": func, "inputs": example_inputs, "sbf": subgraph_builder_function,
             "env": seen_at_start, "env_at_end": os.environ.get(ENV)}
        )  # fmt: skip
        if record.error is not None:
            raise record.error
        return record.result if record.result is not None else _FakeModel(record.ratio)

    module = types.ModuleType("tensorflow.neuron")
    module.trace = trace  # type: ignore[attr-defined]
    module.__version__ = "2.10.fake"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorflow.neuron", module)
    yield record


@pytest.mark.skipif(_really_installed(), reason="tensorflow-neuron is really installed here")
def test_absent_neuron_raises_backend_unavailable_with_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV, "--workdir untouched")
    assert neuron_available() is False
    with pytest.raises(BackendUnavailableError) as caught:
        trace_with_neuron(lambda x: x, [1.0], None, CompilerFlags())
    message = str(caught.value)
    assert INSTALL_COMMAND in message
    assert "pip install tensorflow-neuron[cc] --extra-index-url=https://pip.repos.neuron.amazonaws.com" in message
    assert "Inf1" in message and "Python 3.10" in message
    assert "backend='xla'" in message
    assert "tensorflow.neuron" in message  # says what failed to import
    assert isinstance(caught.value, TraceError)
    assert os.environ[ENV] == "--workdir untouched"


def test_module_import_does_not_import_tensorflow_neuron() -> None:
    code = (
        "import sys, kiln_worker.tracer.backends.neuron; "
        "print([m for m in ('tensorflow.neuron', 'tensorflow_neuron') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_module_is_valid_python_3_10() -> None:
    source = Path(neuron_backend.__file__).read_text()
    ast.parse(source, feature_version=(3, 10))  # raises SyntaxError on 3.11+ syntax


def test_fake_neuron_makes_backend_available(fake_neuron: types.SimpleNamespace) -> None:
    assert neuron_available() is True


@pytest.mark.parametrize("previous", [None, "--workdir previous"])
def test_fake_neuron_receives_flags_in_env_and_env_is_restored(
    fake_neuron: types.SimpleNamespace, monkeypatch: pytest.MonkeyPatch, previous: str | None
) -> None:
    if previous is None:
        monkeypatch.delenv(ENV, raising=False)
    else:
        monkeypatch.setenv(ENV, previous)
    flags = parse_flags("--neuroncore-pipeline-cores=4 --fast-math none --workdir 'a b'")
    func, inputs = object(), (object(), object())

    def sbf(node: Any) -> bool:
        return True

    model = trace_with_neuron(func, inputs, sbf, flags)

    (call,) = fake_neuron.calls
    assert call["func"] is func and call["inputs"] is inputs and call["sbf"] is sbf
    assert call["env"] == call["env_at_end"] == flags.to_string()
    assert parse_flags(call["env"]) == flags
    assert os.environ.get(ENV) == previous
    assert model.on_neuron_ratio == 0.75
    assert model.report["backend"] == "neuron"
    assert model.report["on_neuron_ratio"] == 0.75
    assert model.report["neuron_version"] == "2.10.fake"
    assert model.report["flags"]["neuroncore_pipeline_cores"] == 4
    json.dumps(model.report)


def test_fake_neuron_passes_none_builder_and_empty_flags(
    fake_neuron: types.SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, "--dynamic-batch-size")  # ignored: the parsed flags win
    trace_with_neuron("f", "x", None, CompilerFlags())
    (call,) = fake_neuron.calls
    assert call["sbf"] is None and call["env"] == ""
    assert os.environ[ENV] == "--dynamic-batch-size"


def test_fake_neuron_failure_restores_env_and_raises_trace_error(
    fake_neuron: types.SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, "--workdir before")
    fake_neuron.error = RuntimeError("neuron-cc exited with 1")
    with pytest.raises(TraceError, match="neuron-cc exited with 1") as caught:
        trace_with_neuron("f", "x", None, parse_flags("--static-weights"))
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert os.environ[ENV] == "--workdir before"
    assert fake_neuron.calls[0]["env"] == "--static-weights"


def test_fake_neuron_without_ratio_reports_none_and_low_ratio_warns(
    fake_neuron: types.SimpleNamespace,
) -> None:
    fake_neuron.ratio = None
    model = trace_with_neuron("f", "x", None, CompilerFlags())
    assert model.report["on_neuron_ratio"] is None
    assert not hasattr(model, "on_neuron_ratio")
    fake_neuron.ratio = 0.2
    model = trace_with_neuron("f", "x", None, CompilerFlags())
    assert any("20%" in warning for warning in model.report["warnings"])


def test_fake_neuron_concurrent_traces_each_see_their_own_flags(
    fake_neuron: types.SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV, raising=False)
    fake_neuron.pause = 0.05
    texts = [f"--workdir w{i}" for i in range(6)]
    errors: list[BaseException] = []

    def run(text: str) -> Callable[[], None]:
        def target() -> None:
            try:
                trace_with_neuron(text, None, None, parse_flags(text))
            except BaseException as err:  # surfaced by the assertion below
                errors.append(err)

        return target

    threads = [threading.Thread(target=run(text)) for text in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(call["func"] for call in fake_neuron.calls) == sorted(texts)
    for call in fake_neuron.calls:
        # the environment held this call's flags for the whole call, not another thread's
        assert call["env"] == call["env_at_end"] == call["func"]
    assert ENV not in os.environ


def test_fake_neuron_report_on_a_real_keras_model_stays_plain_json(
    fake_neuron: types.SimpleNamespace,
) -> None:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tf_keras

    inputs = tf_keras.Input(shape=(3,))
    keras_model = tf_keras.Model(inputs, tf_keras.layers.Dense(2)(inputs))
    keras_model.on_neuron_ratio = 0.5
    fake_neuron.result = keras_model
    model = trace_with_neuron(keras_model, None, None, parse_flags("--dynamic-batch-size"))
    assert model is keras_model
    assert type(model.report) is dict
    assert json.loads(json.dumps(model.report))["dynamic_batch"] is True
    assert model.report["on_neuron_ratio"] == 0.5


def test_public_trace_with_fake_neuron_backend_argument_and_env(
    fake_neuron: types.SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kiln_worker

    monkeypatch.setenv(ENV, "--workdir from-env")
    func, inputs = object(), object()
    model = kiln_worker.trace(func, inputs, backend="neuron", flags="--static-weights")
    call = fake_neuron.calls[-1]
    assert call["func"] is func and call["inputs"] is inputs
    assert call["env"] == "--static-weights"
    assert model.report["backend"] == "neuron"
    assert os.environ[ENV] == "--workdir from-env"

    monkeypatch.setenv("KILN_TRACE_BACKEND", "neuron")
    kiln_worker.trace(func, inputs)  # flags=None reads NEURON_CC_FLAGS, as tensorflow-neuron does
    assert fake_neuron.calls[-1]["env"] == "--workdir from-env"
