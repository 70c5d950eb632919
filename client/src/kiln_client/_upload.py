"""Turn what a user hands to ``compile()`` into the two files ``POST /v1/compile`` takes.

* ``model``: a SavedModel directory (packed into a ``.tar.gz`` in a temporary directory, so the
  upload streams from disk), an archive (sent as it is), or, when TensorFlow is installed, a
  keras.Model or tf.function (saved to a temporary SavedModel first). TensorFlow is imported only
  here and only when the object can be a TensorFlow object (TensorFlow already loaded).
* ``example_inputs``: an array or tensor, a list, tuple or dict of them, or a path to an ``.npz``;
  written to an ``.npz`` keyed by the signature's input names. Dict keys are the names; positional
  inputs are mapped in order: a keras model's ``input_names``, a tf.function's arguments, or, for a
  SavedModel on disk, the signature's inputs in the order TensorFlow lists them (sorted by name).
"""

from __future__ import annotations

import logging
import os
import sys
import tarfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kiln_client import example_inputs
from kiln_client._artifacts import TAR_GZ_COMPRESSLEVEL
from kiln_client._savedmodel import ProtoDecodeError, signature_inputs
from kiln_client.errors import InputError

__all__ = [
    "ARCHIVE_SUFFIXES", "PreparedUpload", "prepare_inputs", "prepare_upload", "signature_input_names",
]

logger = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


@dataclass(frozen=True)
class PreparedUpload:
    """Files ready to send: the model archive and, when given, the inputs ``.npz``."""

    model: Path | None
    """``None`` when the service fetches the model itself (``model_url``, ``mlflow_model``)."""
    example_inputs: Path | None


def prepare_upload(
    model: Any, example_inputs: Any, *, signature: str, workdir: Path
) -> PreparedUpload:
    """Pack ``model`` and ``example_inputs`` into files under ``workdir``.

    Args:
        model: a SavedModel directory, an archive path, a keras.Model or a tf.function.
        example_inputs: ``None``, an ``.npz`` path, an array/tensor, or a list/tuple/dict of them.
        signature: the signature whose input names key the ``.npz``.
        workdir: an existing temporary directory owned by the caller.

    Returns:
        The paths to upload.

    Raises:
        InputError: the model or inputs cannot be used; the message says what to pass instead.
    """
    positional_names: list[str] | None = None
    archive: Path | None = None
    if model is None:
        if example_inputs is not None and not isinstance(example_inputs, (str, os.PathLike, Mapping)):
            raise InputError("the model is not uploaded, so its input names are not known here: "
                             "pass example_inputs as a dict keyed by input name, or an .npz path")
    elif isinstance(model, (str, os.PathLike)):
        archive = _pack_path(Path(model), workdir)
    else:
        saved = workdir / "saved_model"
        positional_names = _save_tf_object(model, example_inputs, saved, signature)
        archive = _pack_path(saved, workdir)
    inputs = None
    if example_inputs is not None:
        inputs = _write_inputs(example_inputs, archive, signature, positional_names, workdir)
    return PreparedUpload(model=archive, example_inputs=inputs)


def prepare_inputs(model: Path, example_inputs: Any, *, signature: str, workdir: Path) -> Path | None:
    """Write ``example_inputs`` for a model on disk (a folder or an archive), without packing it.

    Returns:
        The ``.npz`` (a given ``.npz`` path as it is), ``None`` without inputs.

    Raises:
        InputError: The inputs cannot be written.
    """
    if example_inputs is None:
        return None
    return _write_inputs(example_inputs, model, signature, None, workdir)


def _keras_file_hint(path: Path) -> str:
    """How to turn a Keras model file (``.keras``, ``.h5``) into a SavedModel ("" otherwise)."""
    if not path.name.lower().endswith((".keras", ".h5", ".hdf5")):
        return ""
    return ("; this is a Keras model file: load it and export a SavedModel with "
            "model.export(DIR) (Keras 3) or model.save(DIR) (tf.keras 2), then pass DIR")


def _pack_path(path: Path, workdir: Path) -> Path:
    """An archive path as it is, or a SavedModel directory packed into ``workdir``."""
    if not path.exists():
        raise InputError(f"model path {str(path)!r} does not exist")
    if path.is_file():
        if not path.name.lower().endswith(ARCHIVE_SUFFIXES):
            raise InputError(
                f"{path.name}: not a SavedModel directory or archive; pass the directory "
                f"containing saved_model.pb or an archive ({', '.join(ARCHIVE_SUFFIXES)})"
                + _keras_file_hint(path)
            )
        return path
    if not (path / "saved_model.pb").is_file():
        raise InputError(
            f"{path} has no saved_model.pb: pass the SavedModel directory itself "
            "(the one written by model.save() / tf.saved_model.save())"
        )
    target = workdir / "model.tar.gz"
    with tarfile.open(target, "w:gz", compresslevel=TAR_GZ_COMPRESSLEVEL) as tar:
        tar.add(path, arcname="model", recursive=True)
    logger.debug("packed %s into %s (%d bytes)", path, target, target.stat().st_size)
    return target


def _is_tf_object(obj: Any) -> bool:
    """True for keras models and tf.functions; False without importing TensorFlow."""
    if "tensorflow" not in sys.modules and "keras" not in sys.modules:
        # Such objects cannot exist before TensorFlow or Keras has been imported.
        return False
    names = {f"{c.__module__}.{c.__qualname__}" for c in type(obj).__mro__}
    if any(n.endswith(".Model") and n.split(".")[0] in ("keras", "tf_keras") for n in names):
        return True
    try:
        import tensorflow as tf
    except ImportError:  # Keras 3 on another backend: nothing we can save as a SavedModel
        return False
    kinds = (tf.types.experimental.GenericFunction, tf.types.experimental.ConcreteFunction, tf.Module)
    return isinstance(obj, kinds)


def _save_tf_object(obj: Any, example_inputs: Any, dest: Path, signature: str) -> list[str]:
    """Save a keras.Model or tf.function as a SavedModel; return its positional input names."""
    if not _is_tf_object(obj):
        raise InputError(
            f"cannot compile a {type(obj).__name__}: pass a SavedModel directory, an archive "
            "(.tar.gz, .tgz, .tar, .zip), or, with TensorFlow installed, a keras.Model or tf.function"
        )
    import tensorflow as tf

    is_function = isinstance(
        obj, (tf.types.experimental.GenericFunction, tf.types.experimental.ConcreteFunction)
    )
    if is_function:
        names = _save_function(tf, obj, example_inputs, dest, signature)
    else:
        names = _save_keras(tf, obj, example_inputs, dest, signature)
    signature_names = _loaded_signature_names(tf, dest, signature)
    return [n for n in names if n in signature_names] or signature_names


def _save_keras(tf: Any, model: Any, example_inputs: Any, dest: Path, signature: str) -> list[str]:
    """Save a keras model (Keras 2 or 3); return its input names in call order."""
    if signature != "serving_default":
        raise InputError(
            f"a keras.Model is saved with the signature 'serving_default', not {signature!r}"
        )
    if not getattr(model, "built", True) and example_inputs is not None:
        model(_to_call_args(example_inputs))  # subclassed models learn their input shapes here
    if hasattr(model, "export") and type(model).__module__.startswith("keras"):
        model.export(str(dest))  # Keras 3: writes serving_default
    else:
        model.save(str(dest))  # tf_keras: SavedModel format with serving_default
    return list(getattr(model, "input_names", None) or [])


def _save_function(tf: Any, fn: Any, example_inputs: Any, dest: Path, signature: str) -> list[str]:
    """Save a tf.function with ``signature``; return its flattened input names in order."""
    if isinstance(fn, tf.types.experimental.ConcreteFunction):
        concrete = fn
    elif getattr(fn, "input_signature", None) is not None:
        concrete = fn.get_concrete_function()
    elif example_inputs is None:
        raise InputError("a tf.function without input_signature needs example_inputs to be traced")
    elif isinstance(example_inputs, Mapping):
        concrete = fn.get_concrete_function(**dict(example_inputs))
    elif isinstance(example_inputs, tuple):
        concrete = fn.get_concrete_function(*example_inputs)
    else:
        concrete = fn.get_concrete_function(example_inputs)
    module = tf.Module()
    module.fn = concrete
    tf.saved_model.save(module, str(dest), signatures={signature: concrete})
    specs = tf.nest.flatten(concrete.structured_input_signature)
    return [s.name for s in specs if getattr(s, "name", None)]


def _loaded_signature_names(tf: Any, dest: Path, signature: str) -> list[str]:
    loaded = tf.saved_model.load(str(dest))
    if signature not in loaded.signatures:
        raise InputError(f"the saved model has no signature {signature!r}")
    return list(loaded.signatures[signature].structured_input_signature[1].keys())


def _to_call_args(inputs: Any) -> Any:
    if isinstance(inputs, tuple):
        return list(inputs)
    return inputs


def _to_arrays(name: str, value: Any) -> dict[str, np.ndarray]:
    """The ``.npz`` arrays of one input (an array, tensor or nested list); strings keep their
    trailing NUL bytes (:mod:`kiln_client.example_inputs`); never an object array (no pickle)."""
    if hasattr(value, "numpy") and callable(value.numpy):
        value = value.numpy()
    try:
        array = np.asarray(value)
        if array.dtype.kind in "SU" and not isinstance(value, np.ndarray):
            array = np.array(value, dtype=object)  # Python strings: NumPy's would drop NULs
    except (TypeError, ValueError) as exc:
        raise InputError(f"example input {name!r} is not array-like: {exc}") from exc
    try:
        return example_inputs.encode(name, array)
    except ValueError as exc:
        raise InputError(str(exc)) from exc


def _write_inputs(
    inputs: Any, archive: Path | None, signature: str, names: list[str] | None, workdir: Path
) -> Path:
    """Write ``inputs`` to ``workdir/example_inputs.npz`` keyed by signature input names."""
    if isinstance(inputs, (str, os.PathLike)):
        path = Path(inputs)
        if not path.is_file() or path.suffix.lower() != ".npz":
            raise InputError(f"example inputs {str(path)!r}: expected an existing .npz file")
        return path
    if isinstance(inputs, Mapping):
        pairs = [(str(k), v) for k, v in inputs.items()]
    else:
        values = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        if names is None and archive is not None:
            names = signature_input_names(archive, signature)
        names = names or []
        if len(names) != len(values):
            raise InputError(
                f"got {len(values)} positional example input(s) but signature {signature!r} "
                f"takes {len(names)}: {', '.join(names)}; pass a dict keyed by these names"
            )
        pairs = list(zip(names, values, strict=True))
    arrays = {k: a for n, v in pairs for k, a in _to_arrays(n, v).items()}
    target = workdir / "example_inputs.npz"
    np.savez(target, **arrays)  # type: ignore[arg-type]  # numpy's stub mistypes **kwds
    return target


def signature_input_names(model: Path, signature: str) -> list[str]:
    """The input names of ``signature`` in a SavedModel directory or archive, sorted.

    Reads ``saved_model.pb`` with Kiln's one SavedModel reader, so TensorFlow is not needed.

    Args:
        model: a SavedModel directory or an archive holding one (at the root or one level down).
        signature: the signature's key, such as ``serving_default``.

    Returns:
        The input names, sorted as TensorFlow lists a signature's keyword inputs.

    Raises:
        InputError: no ``saved_model.pb``, or no such signature.
    """
    try:
        signatures = signature_inputs(_read_saved_model_pb(model))
    except ProtoDecodeError as exc:
        raise InputError(f"{model.name}: saved_model.pb is not a valid SavedModel ({exc})") from exc
    if signature not in signatures:
        known = ", ".join(sorted(signatures)) or "none"
        raise InputError(f"the SavedModel has no signature {signature!r} (it has: {known})")
    return signatures[signature]


def _read_saved_model_pb(model: Path) -> bytes:
    if model.is_dir():
        return (model / "saved_model.pb").read_bytes()
    name = model.name.lower()
    if name.endswith(".zip"):
        with zipfile.ZipFile(model) as zf:
            for member in zf.namelist():
                if _is_top_pb(member):
                    return zf.read(member)
    else:
        with tarfile.open(model) as tar:
            for info in tar:
                if info.isfile() and _is_top_pb(info.name):
                    handle = tar.extractfile(info)
                    if handle is not None:
                        return handle.read()
    raise InputError(f"{model.name}: no saved_model.pb at the root or one folder down")


def _is_top_pb(member: str) -> bool:
    parts = [p for p in member.split("/") if p not in ("", ".")]
    return bool(parts) and parts[-1] == "saved_model.pb" and len(parts) <= 2
