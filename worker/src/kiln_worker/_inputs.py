"""Example inputs and placement for the compile child (imports TensorFlow; child only).

- :func:`prepare_inputs` gives the signature's example inputs: from the uploaded ``.npz``
  (loaded without pickle) or generated from a fixed seed from the signature's ``TensorSpec``\\ s.
- :func:`placement_callback` turns a ``PlacementSpec`` into a ``subgraph_builder_function``.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from kiln_client import example_inputs
from kiln_client.codes import FailureCode
from kiln_worker._failures import JobError

__all__ = ["JobError", "placement_callback", "prepare_inputs", "signature_specs"]

logger = logging.getLogger(__name__)

#: generated integer inputs are drawn from [0, _INT_HIGH): small, so that they are valid
#: indices for embedding lookups and gathers of any realistic size
_INT_HIGH = 8
#: generated string inputs are drawn from these words (text models take any string)
_WORDS = np.array([b"the", b"kiln", b"fires", b"a", b"model", b"quickly"])


def signature_specs(fn: Any) -> dict[str, tf.TensorSpec]:
    """The keyword inputs of a loaded signature function, name → ``TensorSpec``.

    Raises:
        JobError: the signature takes positional inputs (a signature never should).
    """
    args, kwargs = fn.structured_input_signature
    if args:
        raise JobError(
            FailureCode.UNSUPPORTED_MODEL,
            "the signature takes positional inputs; export it with named inputs "
            "(tf.saved_model.save(..., signatures=...))",
        )
    return dict(kwargs)


def prepare_inputs(
    specs: Mapping[str, tf.TensorSpec],
    npz_path: str | None,
    input_shapes: Mapping[str, Sequence[int]] | None,
    seed: int,
) -> dict[str, tf.Tensor]:
    """The example inputs for a signature, keyed by input name.

    Args:
        specs: the signature's inputs (see :func:`signature_specs`).
        npz_path: an ``.npz`` of example inputs, or ``None`` to generate them.
        input_shapes: shapes to use for generated inputs, overriding the signature's.
        seed: the seed of generated inputs, so that a job is reproducible.

    Returns:
        One tensor per signature input.

    Raises:
        JobError: inputs missing or extra, of the wrong dtype or shape, or a shape that
            cannot be generated.
    """
    if npz_path is not None:
        return _load_npz(specs, Path(npz_path))
    rng = np.random.default_rng(seed)
    shapes = dict(input_shapes or {})
    unknown = sorted(set(shapes) - set(specs))
    if unknown:
        raise JobError(
            FailureCode.INVALID_INPUTS,
            f"input_shapes names {unknown}, which the signature does not take; "
            f"its inputs are {sorted(specs)}",
        )
    # Sorted so that the draws of the RNG do not depend on dict order.
    return {name: _generate(name, specs[name], shapes.get(name), rng) for name in sorted(specs)}


def _load_npz(specs: Mapping[str, tf.TensorSpec], path: Path) -> dict[str, tf.Tensor]:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays, lengths = example_inputs.split({name: data[name] for name in data.files})
        for name in sorted(set(lengths) & set(arrays)):  # strings whole (trailing NUL bytes)
            arrays[name] = example_inputs.decode(name, arrays[name], lengths[name])
    except (OSError, ValueError) as exc:
        raise JobError(FailureCode.INVALID_INPUTS, f"cannot read the example inputs .npz: {exc}") from exc
    missing, extra = sorted(set(specs) - set(arrays)), sorted(set(arrays) - set(specs))
    if missing or extra:
        raise JobError(
            FailureCode.INVALID_INPUTS,
            f"the example inputs do not match the signature: missing {missing}, unexpected "
            f"{extra}; the signature takes {sorted(specs)}",
        )
    return {name: _to_tensor(name, specs[name], arrays[name]) for name in sorted(specs)}


def _as_signature_dtype(spec: tf.TensorSpec, array: np.ndarray) -> np.ndarray | None:
    """``array`` as the dtype ``spec`` takes, or ``None`` when it does not hold that dtype.

    An ``.npz`` stores strings as fixed-width bytes or unicode, and bfloat16 (which numpy does
    not know) as 2-byte void records: those are read back as the signature's dtype.
    """
    if spec.dtype == tf.string:
        strings = array.dtype.kind in "SU" or array.dtype == object  # object: decoded bytes
        return array if strings else None
    if spec.dtype == tf.bfloat16 and array.dtype.kind == "V" and array.dtype.itemsize == 2:
        bfloat16: np.ndarray = array.view(tf.bfloat16.as_numpy_dtype)
        return bfloat16
    return array if array.dtype == spec.dtype.as_numpy_dtype else None


def _to_tensor(name: str, spec: tf.TensorSpec, array: np.ndarray) -> tf.Tensor:
    converted = _as_signature_dtype(spec, array)
    if converted is None:
        raise JobError(
            FailureCode.INVALID_INPUTS,
            f"example input {name!r} has dtype {array.dtype}, the signature wants "
            f"{spec.dtype.name}; convert it with array.astype(...)",
        )
    if not spec.shape.is_compatible_with(array.shape):
        raise JobError(
            FailureCode.INVALID_INPUTS,
            f"example input {name!r} has shape {list(array.shape)}, which does not fit the "
            f"signature's {spec.shape}",
        )
    return tf.constant(converted)


def _generate(
    name: str, spec: tf.TensorSpec, override: Sequence[int] | None, rng: np.random.Generator
) -> tf.Tensor:
    shape = _concrete_shape(name, spec, override)
    dtype = spec.dtype
    if dtype.is_floating:
        array: np.ndarray = rng.random(shape).astype(dtype.as_numpy_dtype)
    elif dtype.is_integer:
        array = rng.integers(0, _INT_HIGH, size=shape).astype(dtype.as_numpy_dtype)
    elif dtype.is_bool:
        array = rng.random(shape) < 0.5
    elif dtype == tf.string:
        array = rng.choice(_WORDS, size=shape)
    else:
        raise JobError(
            FailureCode.INVALID_INPUTS,
            f"cannot generate example input {name!r} of dtype {dtype.name}; "
            "upload example_inputs (.npz) instead",
        )
    logger.info("generated example input %s: %s %s", name, dtype.name, list(shape))
    return tf.constant(array)


def _concrete_shape(
    name: str, spec: tf.TensorSpec, override: Sequence[int] | None
) -> tuple[int, ...]:
    if spec.shape.rank is None:
        if override is None:
            raise JobError(
                FailureCode.INVALID_INPUTS,
                f"input {name!r} has an unknown rank; give its shape in input_shapes "
                "or upload example_inputs",
            )
        return tuple(int(d) for d in override)
    if override is not None:
        if not spec.shape.is_compatible_with(list(override)):
            raise JobError(
                FailureCode.INVALID_INPUTS,
                f"input_shapes gives {name!r} the shape {list(override)}, which does not fit "
                f"the signature's {spec.shape}",
            )
        return tuple(int(d) for d in override)
    dims = spec.shape.as_list()
    if dims and dims[0] is None:
        dims[0] = 1  # an unknown leading dimension is the batch: one example is enough
    if any(d is None for d in dims):
        raise JobError(
            FailureCode.INVALID_INPUTS,
            f"input {name!r} has unknown dimensions {spec.shape} besides the batch; give its "
            "shape in input_shapes or upload example_inputs",
        )
    return tuple(int(d) for d in dims)


def placement_callback(placement: Mapping[str, Any] | None) -> Callable[[Any], bool] | None:
    """A ``subgraph_builder_function`` from a ``PlacementSpec`` (as a dict).

    A node may go to the accelerator when its op type is in ``include_ops`` (or that list is
    empty) and its name matches one of ``include_names`` (or that list is empty), and it is
    neither of an op type in ``exclude_ops`` nor named by ``exclude_names``.

    Args:
        placement: the spec, or ``None`` for automatic placement.

    Returns:
        The callback (``NodeDef → bool``), or ``None`` when ``placement`` is ``None`` or names a
        ``mode`` and no op or name rule (the mode alone decides). A spec with neither accepts
        every node, as before modes existed (placement ``all``).
    """
    rules = ("include_ops", "exclude_ops", "include_names", "exclude_names")
    if placement is None or (placement.get("mode") and not any(placement.get(k) for k in rules)):
        return None
    include_ops = frozenset(placement.get("include_ops") or ())
    exclude_ops = frozenset(placement.get("exclude_ops") or ())
    include_names = tuple(placement.get("include_names") or ())
    exclude_names = tuple(placement.get("exclude_names") or ())

    def subgraph_builder_function(node: Any) -> bool:
        op, node_name = str(node.op), str(node.name)
        if include_ops and op not in include_ops:
            return False
        if op in exclude_ops:
            return False
        if include_names and not any(fnmatch.fnmatchcase(node_name, p) for p in include_names):
            return False
        return not any(fnmatch.fnmatchcase(node_name, p) for p in exclude_names)

    return subgraph_builder_function
