"""The user's path, as one helper: in memory, and through a SavedModel the way the service takes it.

``check_roundtrip`` runs a model twice:

1. **In memory** (``trace(model, example_inputs)`` as a tensorflow-neuron user writes it): the
   traced model's outputs match the original's.
2. **Through SavedModels** (what the service does with an upload): the original is saved,
   loaded with ``tf.saved_model.load``, its serving signature traced with the example inputs as
   keyword arguments, the traced model saved, reloaded (``tf.saved_model.load`` and
   ``tf.keras.models.load_model``) and served at another batch size; each output matches the
   loaded original's on the same inputs. The traced model is reloaded from another directory,
   after the original SavedModel (with its assets) is deleted. With ``fresh_process=True`` the
   load → trace → save → reload → serve leg runs in a new Python process, exactly like the
   service's compile child (no function or object of the original left in memory).

Tolerances are relative to the largest output magnitude: ``|got - want| <= atol + rtol * max|want|``.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

__all__ = ["RoundTrip", "assert_close", "check_roundtrip", "save_original", "serve_saved"]

#: float32 models: relative to the largest output magnitude (the issue's criterion)
RTOL_FLOAT32 = 1e-3
#: 16-bit models: float16 has an 11-bit mantissa (about 1e-3 per op), bfloat16 an 8-bit one
RTOL_FLOAT16 = 2e-2
RTOL_BFLOAT16 = 6e-2


@dataclasses.dataclass
class RoundTrip:
    """What a round trip measured, for tests that assert more (placement, report contents)."""

    in_memory_report: dict[str, Any]
    saved_report: dict[str, Any]
    saved_signature_inputs: dict[str, Any]
    served_outputs: dict[str, np.ndarray]


def _numpy(value: Any) -> np.ndarray:
    array = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
    if array.dtype == object:  # tf.string comes back as bytes objects; .npz keeps only fixed bytes
        array = array.astype(np.bytes_)
    return array


def _flat(outputs: Any) -> list[tuple[str, np.ndarray]]:
    """Outputs as ``(path, array)`` pairs in a stable order (dict keys sorted)."""
    import tensorflow as tf

    if isinstance(outputs, Mapping):
        return [(str(k), _numpy(outputs[k])) for k in sorted(outputs)]
    return [(str(i), _numpy(v)) for i, v in enumerate(tf.nest.flatten(outputs))]


def assert_close(label: str, expected: Any, actual: Any, rtol: float, atol: float = 0.0) -> None:
    """Assert two output structures match within ``atol + rtol * max|expected|`` per output.

    Non-numeric outputs (strings) must be equal. Raises AssertionError naming the output.
    """
    want, got = _flat(expected), _flat(actual)
    assert len(want) == len(got), f"{label}: {len(got)} outputs, the original has {len(want)}"
    for (name, a), (_, b) in zip(want, got, strict=True):
        assert a.shape == b.shape, f"{label}: output {name} shape {b.shape}, expected {a.shape}"
        if a.dtype.kind in "OSU" or b.dtype.kind in "OSU":
            assert (a == b).all(), f"{label}: output {name} differs"
            continue
        wide = np.complex128 if a.dtype.kind == "c" else np.float64  # keep imaginary parts
        a64, b64 = a.astype(wide), b.astype(wide)
        diff = float(np.max(np.abs(a64 - b64), initial=0.0))
        bound = atol + rtol * float(np.max(np.abs(a64), initial=0.0))
        assert diff <= bound, f"{label}: output {name} max abs diff {diff:.3g} > {bound:.3g}"


def call_like_seed(func: Any, example_inputs: Any) -> Any:
    """Call ``func`` the way the seed says ``trace`` does: tuple → *args, dict → **kwargs.

    A Keras model runs in inference mode (``training=False``), as ``trace`` runs it: layers whose
    ``training`` defaults to True (``RandomFlip`` and the other augmentation layers) would
    otherwise change the inputs at random.
    """
    keras = _is_keras_model(func)
    call = functools.partial(func, training=False) if keras else func
    if isinstance(example_inputs, tuple):
        return call(*example_inputs)
    if isinstance(example_inputs, dict) and not keras:
        return call(**example_inputs)
    return call(example_inputs)


def _is_keras_model(func: Any) -> bool:
    return any(cls.__name__ in ("Model", "Functional", "Sequential") for cls in type(func).__mro__)


def save_original(model: Any, directory: Path) -> Path:
    """Save the original as a user would: ``model.save`` for Keras, else ``tf.saved_model.save``.

    A plain ``tf.function`` or ``tf.Module`` must have a ``serving_default`` signature; pass a
    module whose ``__call__`` is a ``tf.function`` with an ``input_signature``.
    """
    import tensorflow as tf

    if _is_keras_model(model) and _is_tf_keras(model):
        model.save(str(directory), save_format="tf")
    else:
        tf.saved_model.save(model, str(directory))
    return directory


def _is_tf_keras(model: Any) -> bool:
    return type(model).__module__.startswith(("tf_keras", "keras.src.engine", "tensorflow"))


def signature_inputs(signature: Any, inputs: Any) -> dict[str, Any]:
    """Key ``inputs`` (a dict, a nest or one array) by the signature's input names.

    A dict whose keys are the signature's names is used as is; otherwise the flattened inputs are
    matched to the signature's names in the order the signature declares them.
    """
    import tensorflow as tf

    names = list(signature.structured_input_signature[1])
    if isinstance(inputs, Mapping) and set(inputs) == set(names):
        return {k: tf.constant(v) for k, v in inputs.items()}
    flat = tf.nest.flatten(inputs)
    if len(flat) != len(names):
        raise ValueError(f"{len(flat)} inputs for a signature taking {names}; pass a dict")
    if len(names) > 1:
        # Keras 2 names signature inputs after its Input layers, Keras 3's tf.saved_model.save
        # signature ``inputs``, ``inputs_1`` ... in its inputs' order: tf.nest order, sorted
        names = sorted(names)
    return {name: tf.constant(value) for name, value in zip(names, flat, strict=True)}


def serve_saved(saved_dir: Path, traced_dir: Path, batch_inputs: Mapping[str, Any],
                other_inputs: Mapping[str, Any], trace_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The service's leg: load → trace the serving signature → save → reload → serve.

    ``saved_dir`` is deleted once the traced model is saved, and the traced model is moved
    before it is reloaded: it must not depend on the original's files (e.g. vocabulary assets).

    Returns ``{"report", "served", "served_other", "keras_other"}`` (outputs as numpy dicts).
    """
    import tensorflow as tf

    import kiln_worker

    loaded = tf.saved_model.load(str(saved_dir))
    signature = loaded.signatures["serving_default"]
    traced = kiln_worker.trace(signature, dict(batch_inputs), **dict(trace_kwargs))
    report = dict(traced.report)
    traced.save(str(traced_dir))
    del traced, signature, loaded
    gc.collect()
    # The compiled model must carry everything it needs (weights, tables, assets): it is reloaded
    # from another directory, with the original SavedModel and its assets gone.
    shutil.rmtree(saved_dir)
    moved_dir = traced_dir.with_name(traced_dir.name + "_moved")
    shutil.move(str(traced_dir), str(moved_dir))
    reloaded = tf.saved_model.load(str(moved_dir))
    serving = reloaded.signatures["serving_default"]
    result = {
        "report": report,
        "served": {k: _numpy(v) for k, v in serving(**batch_inputs).items()},
        "served_other": {k: _numpy(v) for k, v in serving(**other_inputs).items()},
    }
    keras_model = tf.keras.models.load_model(str(moved_dir))
    keras_out = keras_model(dict(other_inputs))  # traced with a dict, the model takes a dict
    result["keras_other"] = dict(_flat(keras_out))
    return result


def _serve_in_fresh_process(saved_dir: Path, work: Path, batch_inputs: Mapping[str, Any],
                            other_inputs: Mapping[str, Any], trace_kwargs: Mapping[str, Any]
                            ) -> dict[str, Any]:
    np.savez(work / "batch.npz", **{k: _numpy(v) for k, v in batch_inputs.items()})
    np.savez(work / "other.npz", **{k: _numpy(v) for k, v in other_inputs.items()})
    (work / "kwargs.json").write_text(json.dumps(dict(trace_kwargs)))
    proc = subprocess.run(
        [sys.executable, __file__, str(saved_dir), str(work)],
        capture_output=True, text=True, timeout=600, env={**os.environ},
    )
    assert proc.returncode == 0, f"fresh-process round trip failed:\n{proc.stderr[-4000:]}"
    result: dict[str, Any] = {"report": json.loads((work / "report.json").read_text())}
    for key in ("served", "served_other", "keras_other"):
        with np.load(work / f"{key}.npz", allow_pickle=False) as data:
            result[key] = {k: data[k] for k in data.files}
    return result


def check_roundtrip(
    model: Any,
    example_inputs: Any,
    other_inputs: Any,
    tmp_path: Path,
    *,
    rtol: float = RTOL_FLOAT32,
    atol: float = 0.0,
    fresh_process: bool = False,
    in_memory: bool = True,
    trace_kwargs: Mapping[str, Any] | None = None,
    save: Callable[[Any, Path], Path] = save_original,
) -> RoundTrip:
    """Check ``model`` in memory and through the SavedModel path; see the module docstring.

    Args:
        model: what a user passes to ``trace`` (keras.Model, tf.function, tf.Module ...).
        example_inputs: the seed-style example inputs (tensor, list, tuple or dict nest).
        other_inputs: the same structure at another batch size, to serve the reloaded model.
        tmp_path: a scratch directory.
        rtol, atol: the tolerance (see the module docstring); 16-bit models pass a looser rtol.
        fresh_process: run the SavedModel leg in a new process, as the service's child does.
        in_memory: also run the in-memory leg (off for models only a SavedModel can express).
        trace_kwargs: extra ``trace`` keyword arguments (e.g. ``subgraph_builder_function``).
        save: how to save the original (default :func:`save_original`).
    """
    import tensorflow as tf

    import kiln_worker

    kwargs = dict(trace_kwargs or {})
    report: dict[str, Any] = {}
    if in_memory:
        expected = call_like_seed(model, example_inputs)
        traced = kiln_worker.trace(model, example_inputs, **kwargs)
        assert_close("in memory", expected, call_like_seed(traced, example_inputs), rtol, atol)
        report = dict(traced.report)
        del traced
    saved_dir = save(model, tmp_path / "original")
    loaded = tf.saved_model.load(str(saved_dir))
    signature = loaded.signatures["serving_default"]
    batch = signature_inputs(signature, example_inputs)
    other = signature_inputs(signature, other_inputs)
    want, want_other = signature(**batch), signature(**other)
    del signature, loaded
    gc.collect()
    plain_kwargs = {k: v for k, v in kwargs.items() if isinstance(v, (str, int, float, bool))}
    if fresh_process and plain_kwargs == kwargs:
        work = tmp_path / "fresh"
        work.mkdir()
        got = _serve_in_fresh_process(saved_dir, work, batch, other, kwargs)
    else:
        got = serve_saved(saved_dir, tmp_path / "traced", batch, other, kwargs)
    assert_close("saved, reloaded, served", want, got["served"], rtol, atol)
    assert_close("served at another batch", want_other, got["served_other"], rtol, atol)
    assert_close("keras.models.load_model at another batch", want_other, got["keras_other"],
                 rtol, atol)
    return RoundTrip(report, got["report"], dict(batch), got["served_other"])


def _main(saved_dir: str, work: str) -> int:
    """The fresh-process leg: ``python roundtrip.py SAVED_DIR WORK_DIR``."""
    import tensorflow as tf

    folder = Path(work)
    with np.load(folder / "batch.npz", allow_pickle=False) as data:
        batch = {k: tf.constant(data[k]) for k in data.files}
    with np.load(folder / "other.npz", allow_pickle=False) as data:
        other = {k: tf.constant(data[k]) for k in data.files}
    kwargs = json.loads((folder / "kwargs.json").read_text())
    result = serve_saved(Path(saved_dir), folder / "traced", batch, other, kwargs)
    (folder / "report.json").write_text(json.dumps(result["report"], default=str))
    for key in ("served", "served_other", "keras_other"):
        np.savez(folder / f"{key}.npz", **result[key])
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1], sys.argv[2]))
