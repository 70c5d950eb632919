"""Pass ``inputs``: normalise ``func`` and ``example_inputs`` into one flat concrete function.

The seed's calling conventions: a Tensor or a list → ``func(x)``; a tuple → ``func(*x)``; a dict →
``func(**x)``, except a keras.Model whose inputs are a dict, which gets the dict itself.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

from kiln_worker.tracer.errors import TraceInputError, model_error_text

logger = logging.getLogger(__name__)
_PASS = "inputs"


@dataclass(frozen=True)
class Structure:
    """The nesting of a call's inputs or outputs: ``tensor``, ``list``, ``tuple`` or ``dict``."""

    kind: str
    keys: tuple[str, ...] = ()

    def flatten(self, value: Any) -> list[Any]:
        """Flatten ``value`` (of this structure) into a list of leaves."""
        if self.kind == "tensor":
            return [value]
        if self.kind == "dict":
            if not isinstance(value, dict) or set(value) != set(self.keys):
                raise TraceInputError(f"expected a dict with keys {list(self.keys)}", _PASS)
            return [value[k] for k in self.keys]
        if not isinstance(value, (list, tuple)) or len(value) != len(self.keys):
            raise TraceInputError(f"expected a {self.kind} of {len(self.keys)} tensors", _PASS)
        return list(value)

    def pack(self, leaves: Sequence[Any]) -> Any:
        """Rebuild a value of this structure from its leaves."""
        if self.kind == "tensor":
            return leaves[0]
        if self.kind == "dict":
            return dict(zip(self.keys, leaves, strict=True))
        return list(leaves) if self.kind == "list" else tuple(leaves)


@dataclass
class TracedFunction:
    """``func`` as one concrete function over flat tensors, with what is needed to undo it."""

    concrete: Any
    input_structure: Structure
    output_structure: Structure
    examples: list[np.ndarray]
    reference_outputs: list[np.ndarray]
    batch_relaxed: bool
    input_names: list[str] = field(default_factory=list)


def _is_keras_model(func: Any) -> bool:
    return any(
        c.__name__ in ("Model", "Functional", "Sequential")
        and c.__module__.split(".")[0] in ("keras", "tf_keras")
        for c in type(func).__mro__
    )


def _keras_takes_dict(model: Any) -> bool:
    try:
        return isinstance(model.input, dict)
    except (AttributeError, ValueError, TypeError):
        return False


def _as_array(value: Any, where: str) -> np.ndarray:
    if isinstance(value, (tf.Tensor, tf.Variable)):
        return np.asarray(value.numpy())
    if isinstance(value, (np.ndarray, np.generic, int, float, bool)):
        return np.asarray(value)
    raise TraceInputError(
        f"example input {where} is a {type(value).__name__}; use a tf.Tensor or a numpy array "
        "(example_inputs is a Tensor, or a tuple/list/dict of Tensors)",
        _PASS,
    )


def split_example_inputs(example_inputs: Any) -> tuple[Structure, list[np.ndarray]]:
    """Split ``example_inputs`` into its structure and its leaves as numpy arrays.

    Raises:
        TraceInputError: nested structures, non-string dict keys, mixed args or non-tensors.
    """
    if isinstance(example_inputs, dict):
        if not example_inputs or not all(isinstance(k, str) for k in example_inputs):
            raise TraceInputError("a dict of example inputs needs string keys, at least one", _PASS)
        keys = tuple(example_inputs)
        return Structure("dict", keys), [_as_array(example_inputs[k], f"'{k}'") for k in keys]
    if isinstance(example_inputs, (list, tuple)):
        if not example_inputs:
            raise TraceInputError("example_inputs is empty", _PASS)
        if isinstance(example_inputs, tuple) and isinstance(example_inputs[-1], dict):
            raise TraceInputError(
                "mixed positional and keyword arguments are not supported: pass a tuple "
                "(func(*x)) or a dict (func(**x)), not both",
                _PASS,
            )
        kind = "tuple" if isinstance(example_inputs, tuple) else "list"
        keys = tuple(str(i) for i in range(len(example_inputs)))
        return Structure(kind, keys), [_as_array(v, f"#{i}") for i, v in enumerate(example_inputs)]
    return Structure("tensor"), [_as_array(example_inputs, "")]


def _check_signature(func: Any, structure: Structure) -> None:
    """Reject calling conventions ``func`` cannot take, before tracing hides the reason."""
    target = getattr(func, "python_function", func)
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return
    kinds = {p.kind for p in params if p.default is inspect.Parameter.empty}
    if inspect.Parameter.KEYWORD_ONLY in kinds and structure.kind != "dict":
        raise TraceInputError(
            "func has required keyword-only arguments: pass example_inputs as a dict "
            "(mixed positional and keyword arguments are not supported)",
            _PASS,
        )
    if inspect.Parameter.POSITIONAL_ONLY in kinds and structure.kind == "dict":
        raise TraceInputError(
            "func has positional-only arguments: pass example_inputs as a tuple, not a dict",
            _PASS,
        )


def _concrete_caller(func: Any, structure: Structure) -> Callable[[list[Any]], Any]:
    """Calling convention of a ConcreteFunction (a loaded signature takes keywords only)."""
    args_spec, kwargs_spec = func.structured_input_signature
    if kwargs_spec and not args_spec:
        names = sorted(kwargs_spec)
        if structure.kind == "dict":
            return lambda leaves: func(**structure.pack(leaves))
        if structure.kind == "tensor" and len(names) == 1:
            return lambda leaves: func(**{names[0]: leaves[0]})
        raise TraceInputError(
            f"this ConcreteFunction takes keyword arguments {names}: pass a dict with those keys",
            _PASS,
        )
    return _plain_caller(func, structure)


def _plain_caller(func: Any, structure: Structure) -> Callable[[list[Any]], Any]:
    if structure.kind in ("tensor", "list"):
        return lambda leaves: func(structure.pack(leaves))
    if structure.kind == "tuple":
        return lambda leaves: func(*leaves)
    return lambda leaves: func(**structure.pack(leaves))


def make_caller(func: Any, structure: Structure) -> Callable[[list[Any]], Any]:
    """Return ``call(leaves) -> outputs`` that calls ``func`` the way the seed prescribes.

    Raises:
        TraceInputError: ``func`` is not callable or cannot take this structure.
    """
    if not callable(func):
        raise TraceInputError(f"func must be callable, got {type(func).__name__}", _PASS)
    if isinstance(func, tf.types.experimental.ConcreteFunction):
        return _concrete_caller(func, structure)
    if _is_keras_model(func):
        if structure.kind == "dict" and _keras_takes_dict(func):
            call = lambda leaves: func(structure.pack(leaves), training=False)  # noqa: E731
        else:
            call = _plain_caller(lambda *a, **k: func(*a, **k, training=False), structure)
        return call
    _check_signature(func, structure)
    return _plain_caller(func, structure)


def split_outputs(outputs: Any) -> tuple[Structure, list[Any]]:
    """Split a function's outputs into a structure and tensors.

    Raises:
        TraceInputError: outputs that are not tensors, or nested deeper than one level.
    """
    if isinstance(outputs, dict):
        keys = tuple(str(k) for k in outputs)
        leaves = list(outputs.values())
        structure = Structure("dict", keys)
    elif isinstance(outputs, (list, tuple)):
        leaves = list(outputs)
        kind = "tuple" if isinstance(outputs, tuple) else "list"
        structure = Structure(kind, tuple(str(i) for i in range(len(leaves))))
    else:
        leaves, structure = [outputs], Structure("tensor")
    for leaf in leaves:
        if not isinstance(leaf, tf.Tensor):
            raise TraceInputError(
                f"func must return a Tensor or a list/tuple/dict of Tensors, got {type(leaf).__name__}",
                _PASS,
            )
    return structure, leaves


def _specs(examples: list[np.ndarray], relax_batch: bool) -> list[tf.TensorSpec]:
    specs = []
    for i, x in enumerate(examples):
        shape = list(x.shape)
        if relax_batch and shape:
            shape[0] = None
        specs.append(tf.TensorSpec(shape, tf.as_dtype(x.dtype), name=f"input_{i}"))
    return specs


def trace_function(func: Any, example_inputs: Any) -> TracedFunction:
    """Trace ``func`` on ``example_inputs`` into a concrete function over flat tensors.

    It is first traced with axis 0 relaxed to ``None`` (dynamic batch), then, if that fails,
    with the exact example shapes.

    Args:
        func: a keras.Model (Keras 2 or 3), a tf.function, a ConcreteFunction or a callable.
        example_inputs: a Tensor / ndarray, or a tuple, list or dict of them.

    Returns:
        The traced function, its input and output structures and the reference outputs.

    Raises:
        TraceInputError: when func cannot be called with example_inputs as the seed says.
    """
    in_structure, examples = split_example_inputs(example_inputs)
    caller = make_caller(func, in_structure)
    out_holder: list[Structure] = []

    def flat_fn(*leaves: tf.Tensor) -> list[tf.Tensor]:
        structure, outs = split_outputs(caller(list(leaves)))
        out_holder[:] = [structure]
        return [tf.identity(t) for t in outs]

    concrete, relaxed, first_error = None, False, None
    all_ranked = all(x.ndim > 0 for x in examples)
    for relax in [True, False] if all_ranked else [False]:
        try:
            concrete = tf.function(flat_fn).get_concrete_function(*_specs(examples, relax))
            relaxed = relax
            break
        except TraceInputError:
            raise
        except Exception as e:  # any tracing failure: retry with exact shapes
            logger.debug("tracing with relax_batch=%s failed: %s", relax, e)
            first_error = first_error or e
    if concrete is None:
        raise TraceInputError(
            f"calling func with example_inputs failed: {model_error_text(first_error)}",
            _PASS,
        ) from first_error
    reference = [np.asarray(t.numpy()) for t in concrete(*[tf.constant(x) for x in examples])]
    logger.debug("inputs: %s in, %s out, batch relaxed=%s", in_structure, out_holder[0], relaxed)
    return TracedFunction(concrete, in_structure, out_holder[0], examples, reference, relaxed)
