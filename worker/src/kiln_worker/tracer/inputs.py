"""Pass ``inputs``: normalise ``func`` and ``example_inputs`` into one flat concrete function.

The seed's calling conventions: a Tensor or a list → ``func(x)``; a tuple → ``func(*x)``; a dict →
``func(**x)``, except a keras.Model whose inputs are a dict (or whose ``call`` cannot take the
keys as keywords: a subclassed model reading ``inputs["image"]``), which gets the dict itself. Inside
that outer convention the example inputs may be nested as ``tf.nest`` allows (a tuple holding a
list, a tuple of dicts ...) and hold tensors of any dtype; the traced function takes their leaves,
flattened in ``tf.nest`` order, with exactly their dtypes and shapes (axis 0 relaxed when it can).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

from kiln_worker.tracer import legacy
from kiln_worker.tracer.batching import batch_candidates, batch_rows, runs_at_double
from kiln_worker.tracer.errors import TraceInputError, model_error_text
from kiln_worker.tracer.graphs import not_autograph
from kiln_worker.tracer.reference import run_reference
from kiln_worker.tracer.structure import Structure, structure_of

logger = logging.getLogger(__name__)
_PASS = "inputs"
_COMPOSITES = (tf.SparseTensor, tf.RaggedTensor, tf.compat.v1.SparseTensorValue)


@dataclass
class TracedFunction:
    """``func`` as one concrete function over flat tensors, with what is needed to undo it.

    ``reference_source`` is ``tensorflow`` when the reference outputs come from running the
    original with TensorFlow's own kernels, ``xla`` when those could not run it (then
    ``reference_reason`` says why) and the original was run compiled whole by XLA instead.

    ``batched`` says, per input, whether its axis 0 is the batch (relaxed to ``None`` when
    ``batch_relaxed``); scalars and side inputs of a fixed shape are not. ``varying`` says, per
    output, whether the original gives another value at each call (a random draw): those are
    compared by shape and dtype only.
    """

    concrete: Any
    input_structure: Structure
    output_structure: Structure
    examples: list[np.ndarray]
    reference_outputs: list[np.ndarray]
    batch_relaxed: bool
    input_names: list[str] = field(default_factory=list)
    reference_source: str = "tensorflow"
    reference_reason: str | None = None
    batched: tuple[bool, ...] = ()
    varying: tuple[bool, ...] = ()

    @property
    def batch_rows(self) -> int | None:
        """The example batch: axis 0 of the first batched input (``None``: none is batched)."""
        return batch_rows(self.examples, self.batched)


def _is_keras_model(func: Any) -> bool:
    return any(
        c.__name__ in ("Model", "Functional", "Sequential")
        and c.__module__.split(".")[0] in ("keras", "tf_keras")
        for c in type(func).__mro__
    )


def _needs_autograph(func: Any) -> bool:
    """Whether to trace ``func`` with AutoGraph: Python code (a function, a Keras model and its
    layers) may branch on tensors; a ConcreteFunction (a loaded signature) is a graph already,
    and a tf.function applies its own AutoGraph setting."""
    if isinstance(func, tf.types.experimental.ConcreteFunction):
        return False
    return not callable(getattr(func, "get_concrete_function", None))


def _keras_takes_dict(model: Any, keys: Sequence[str]) -> bool:
    """Whether a keras.Model gets a dict of example inputs whole: its inputs are a dict, or its
    ``call`` cannot take the keys as keyword arguments (a subclassed model whose ``call(inputs)``
    reads ``inputs["image"]`` has no ``input`` to look at)."""
    try:
        if isinstance(model.input, dict):
            return True
    except (AttributeError, ValueError, TypeError):
        pass
    try:
        inspect.signature(model.call).bind(**dict.fromkeys(keys))
    except TypeError:
        return True
    except ValueError:  # no signature to read: keep the seed's func(**x)
        return False
    return False


def _composite_advice(value: Any) -> str | None:
    """What to do with a composite tensor at the boundary (``None``: not a composite)."""
    if isinstance(value, tf.RaggedTensor):
        return (
            "is a tf.RaggedTensor, which cannot cross the traced model's boundary: pass a dense "
            "tensor (convert with .to_tensor()), or its components (.flat_values and "
            ".row_splits) as separate tensors and rebuild it with tf.RaggedTensor.from_row_splits"
        )
    if isinstance(value, (tf.SparseTensor, tf.compat.v1.SparseTensorValue)):
        return (
            "is a tf.SparseTensor, which cannot cross the traced model's boundary: pass a dense "
            "tensor (convert with tf.sparse.to_dense()), or its components (.indices, .values, "
            ".dense_shape) as separate tensors and rebuild it with tf.SparseTensor"
        )
    return None


def _as_array(value: Any, where: str) -> np.ndarray:
    name = f"example input {where}" if where else "example input"
    advice = _composite_advice(value)
    if advice:
        raise TraceInputError(f"{name} {advice}", _PASS)
    if isinstance(value, (tf.Tensor, tf.Variable)):
        return np.asarray(value.numpy())
    if isinstance(value, (np.ndarray, np.generic, int, float, bool)):
        return np.asarray(value)
    raise TraceInputError(
        f"{name} is a {type(value).__name__}; use a tf.Tensor or a numpy array "
        "(example_inputs is a Tensor, or a tuple/list/dict of Tensors, nested as tf.nest allows)",
        _PASS,
    )


def leaf_dtype(array: np.ndarray) -> tf.DType:
    """The TensorFlow dtype of an example leaf (numpy bytes, str and object arrays: string)."""
    if array.dtype.kind in "OSU":
        return tf.string
    return tf.as_dtype(array.dtype)


def example_specs(
    examples: list[np.ndarray], relax_batch: bool | Sequence[bool]
) -> list[tf.TensorSpec]:
    """One TensorSpec per example leaf: its dtype and shape, axis 0 ``None`` if ``relax_batch``
    (a bool for every leaf, or one per leaf)."""
    relax = [relax_batch] * len(examples) if isinstance(relax_batch, bool) else relax_batch
    specs = []
    for i, (x, relaxed) in enumerate(zip(examples, relax, strict=True)):
        shape = list(x.shape)
        if relaxed and shape:
            shape[0] = None
        specs.append(tf.TensorSpec(shape, leaf_dtype(x), name=f"input_{i}"))
    return specs


def split_example_inputs(example_inputs: Any) -> tuple[Structure, list[np.ndarray]]:
    """Split ``example_inputs`` into its structure and its leaves as numpy arrays.

    Raises:
        TraceInputError: non-string dict keys, empty inputs, composite tensors or non-tensors.
    """
    if isinstance(example_inputs, dict):
        if not example_inputs or not all(isinstance(k, str) for k in example_inputs):
            raise TraceInputError("a dict of example inputs needs string keys, at least one", _PASS)
    elif isinstance(example_inputs, (list, tuple)) and not tf.nest.flatten(example_inputs):
        raise TraceInputError("example_inputs is empty", _PASS)
    structure = structure_of(example_inputs)
    if structure.kind == "tensor":
        return structure, [_as_array(example_inputs, "")]
    leaves = tf.nest.flatten(example_inputs)
    names = [f"'{p}'" if structure.kind == "dict" else f"#{p}" for p in structure.paths]
    return structure, [_as_array(v, n) for v, n in zip(leaves, names, strict=True)]


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
        return lambda leaves: func(*structure.pack(leaves))
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
        if structure.kind == "dict" and _keras_takes_dict(func, list(structure.template)):
            call = lambda leaves: func(structure.pack(leaves), training=False)  # noqa: E731
        else:
            call = _plain_caller(lambda *a, **k: func(*a, **k, training=False), structure)
        return call
    _check_signature(func, structure)
    return _plain_caller(func, structure)


@not_autograph
def split_outputs(outputs: Any) -> tuple[Structure, list[Any]]:
    """Split a function's outputs (any ``tf.nest`` nest of tensors) into a structure and tensors.

    Raises:
        TraceInputError: an output that is not a dense tensor, naming it and what to do.
    """
    structure = structure_of(outputs)
    leaves = tf.nest.flatten(outputs) if structure.kind != "tensor" else [outputs]
    for path, leaf in zip(structure.paths, leaves, strict=True):
        name = f"func's output {path!r}" if path else "func's output"
        advice = _composite_advice(leaf)
        if advice:
            raise TraceInputError(f"{name} {advice}", _PASS)
        if not isinstance(leaf, tf.Tensor):
            raise TraceInputError(
                f"{name} is a {type(leaf).__name__}; func must return a Tensor or a "
                "list/tuple/dict of Tensors (nested as tf.nest allows)",
                _PASS,
            )
    return structure, leaves


def _concrete(
    flat_fn: Callable[..., Any],
    autograph: bool,
    examples: list[np.ndarray],
    candidates: list[tuple[bool, ...]],
) -> tuple[Any, tuple[bool, ...]]:
    """Trace ``flat_fn`` with the first of ``candidates`` (inputs whose axis 0 is relaxed) that
    traces; return the concrete function and that candidate.

    Raises:
        TraceInputError: no candidate traces, with the first failure's message.
    """
    first_error = None
    for i, batched in enumerate(candidates):
        try:
            specs = example_specs(examples, batched)
            function = tf.function(flat_fn, autograph=autograph)
            concrete = function.get_concrete_function(*specs)
        except TraceInputError:
            raise
        except Exception as e:  # any tracing failure: retry with fewer relaxed axes
            logger.debug("tracing with batched=%s failed: %s", batched, e)
            first_error = first_error or e
            continue
        # A fewer-batched candidate is left: this one must also run at another batch (a side
        # input of another size, a weight matrix say, traced relaxed but not batched).
        if i + 2 >= len(candidates) or runs_at_double(concrete, examples, batched):
            return concrete, batched
    error = first_error or RuntimeError("func could not be traced")
    raise TraceInputError(
        f"calling func with example_inputs failed: {model_error_text(error)}", _PASS
    ) from error


def trace_function(func: Any, example_inputs: Any) -> TracedFunction:
    """Trace ``func`` on ``example_inputs`` into a concrete function over flat tensors.

    It is traced with axis 0 relaxed to ``None`` (dynamic batch) on as many inputs as it allows
    (:func:`batch_candidates`), at worst none. The reference outputs come from running it with
    TensorFlow, or compiled whole by XLA when TensorFlow's CPU kernels cannot run it.

    Args:
        func: a keras.Model (Keras 2 or 3), a tf.function, a ConcreteFunction or a callable.
        example_inputs: a Tensor / ndarray, or a tuple, list or dict of them (nested as tf.nest
            allows, any dtype).

    Returns:
        The traced function, its input and output structures and the reference outputs.

    Raises:
        TraceInputError: when func cannot be called with example_inputs as the seed says.
    """
    in_structure, examples = split_example_inputs(example_inputs)
    if legacy.is_v1_signature(func):  # a TF1 SavedModel's signature: made a TF2 function first
        func = legacy.as_tf2(func)
    caller = make_caller(func, in_structure)
    out_holder: list[Structure] = []
    refused: list[TraceInputError] = []

    def flat_fn(*leaves: tf.Tensor) -> list[tf.Tensor]:
        try:
            structure, outs = split_outputs(caller(list(leaves)))
        except TraceInputError as e:  # AutoGraph would wrap it in a StagingError: keep it whole
            refused[:] = [e]
            raise
        out_holder[:] = [structure]
        return [tf.identity(t) for t in outs]

    candidates = batch_candidates(examples)
    try:
        concrete, batched = _concrete(flat_fn, _needs_autograph(func), examples, candidates)
    except TraceInputError as e:
        raise (refused[0] if refused else e) from e.__cause__
    relaxed = any(batched)
    reference = run_reference(concrete, [tf.constant(x) for x in examples])
    logger.debug("inputs: %s in, %s out, batched=%s", in_structure, out_holder[0], batched)
    return TracedFunction(
        concrete,
        in_structure,
        out_holder[0],
        examples,
        reference.outputs,
        relaxed,
        # traced at exact shapes: the inputs that look batched (for --dynamic-batch-size)
        batched=batched if relaxed else candidates[max(len(candidates) - 2, 0)],
        reference_source=reference.source,
        reference_reason=reference.reason,
        varying=reference.varying,
    )
