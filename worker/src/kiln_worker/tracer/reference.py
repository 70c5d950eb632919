"""Run a function where it can run: with TensorFlow's own kernels, else compiled whole by XLA.

An accelerator runs ops that TensorFlow's CPU executor has no kernel for (a float16 NCHW
convolution, say), so the tracer must not need those kernels. The original's reference outputs,
and the values at subgraph boundaries, come from TensorFlow when it can run the function, and from
XLA (``tf.function(jit_compile=True)``) when it cannot; the caller records which and why.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from kiln_worker.tracer.errors import UnsupportedModelError
from kiln_worker.tracer.tolerance import same_values

__all__ = ["Reference", "call_with_xla_fallback", "lacks_cpu_kernel", "run_reference"]

logger = logging.getLogger(__name__)
#: TensorFlow's words when a tf.py_function's Python callback is not in this process
_CALLBACK_LOST = "Could not find callback with key="
#: Words of TensorFlow's messages for an op it has no (usable) CPU kernel for.
_KERNEL_HINTS = ("OpKernel", "only supports", "on the CPU", "on CPU", "kernel for")


@dataclass(frozen=True)
class Reference:
    """Outputs of the original, and what computed them (``tensorflow`` or ``xla``, and why).

    ``varying`` says, per output, whether a second run on the same inputs gave another value
    (a random draw: ``tf.random.uniform``, dropout with ``training=True``): such an output can
    only be checked by its shape and dtype.
    """

    outputs: list[np.ndarray]
    source: str
    reason: str | None
    varying: tuple[bool, ...] = ()


def lacks_cpu_kernel(exc: BaseException) -> bool:
    """Whether ``exc`` says TensorFlow has no kernel for an op here (not a model's own error)."""
    if isinstance(exc, tf.errors.UnimplementedError):
        return True
    if isinstance(exc, (tf.errors.InvalidArgumentError, tf.errors.NotFoundError)):
        text = str(exc)
        if "OpKernel" in text or ("kernel" in text and "registered" in text):
            return True
        # A CPU kernel that exists for other layouts only ("Default AvgPoolingOp only supports
        # NHWC on device type CPU", "... only supports the NHWC tensor format on CPU").
        return "NHWC" in text and "CPU" in text
    return False


def first_line(exc: BaseException) -> str:
    """The line of an error that says what failed (the kernel's complaint when there is one)."""
    lines = [line.strip() for line in (str(exc).strip() or type(exc).__name__).splitlines()]
    lines = [
        line
        for line in lines
        if line and not line.endswith("execution error:") and not line.startswith('File "')
    ]
    hinted = [line for line in lines if any(h in line for h in _KERNEL_HINTS)]
    line = (hinted or lines or [type(exc).__name__])[0]
    if line.startswith("{{function_node") and "}}" in line:
        line = line.split("}}", 1)[1].strip() or line
    return line[:300]


def call_with_xla_fallback(
    fn: Callable[..., Any], args: list[Any], pass_name: str = "inputs", *, in_graph: bool = True
) -> tuple[Any, str | None]:
    """``fn(*args)``; compiled by XLA if TensorFlow's kernels cannot run it.

    Args:
        fn: the function; ``in_graph`` runs it inside a tf.function (needed for Python functions
            that build a graph), else it is called as it is (a ConcreteFunction: its own errors
            then keep the user's frames and are raised when it runs, not while re-tracing).
        args: its arguments.
        pass_name: the pass named by an error.

    Returns:
        The outputs, and ``None`` (TensorFlow ran it) or why XLA had to.

    Raises:
        UnsupportedModelError: neither TensorFlow's kernels nor XLA can run it, or it calls a
            Python function (tf.py_function) that this process does not have (a SavedModel
            loaded elsewhere).
        tf.errors.OpError: the function's own error (a failed assertion, a bad shape).
    """
    try:
        return (_graph_call(fn, args) if in_graph else fn(*args)), None
    except tf.errors.OpError as e:
        if _CALLBACK_LOST in str(e):
            raise UnsupportedModelError(_lost_callback_message(e), pass_name) from e
        if not lacks_cpu_kernel(e):
            raise
        return _with_xla(fn, args, e, pass_name)


def _graph_call(fn: Callable[..., Any], args: list[Any]) -> Any:
    """``fn(*args)`` traced once into a graph and run. Called through its concrete function, so
    that TensorFlow's "frequent retracing" warning (it counts the tf.functions made here for
    one trace's many graphs as retraces of one function) does not reach the user's log."""
    return tf.function(fn, autograph=False).get_concrete_function(*args)(*args)


def _with_xla(fn: Callable[..., Any], args: list[Any], error: tf.errors.OpError,
              pass_name: str) -> tuple[Any, str]:
    """``fn(*args)`` compiled whole by XLA, after TensorFlow's kernels failed with ``error``."""
    reason = f"TensorFlow's CPU kernels cannot run the original: {first_line(error)}"
    logger.info("%s; running it compiled by XLA", reason)
    try:
        return tf.function(lambda *a: fn(*a), autograph=False, jit_compile=True)(*args), reason
    except Exception as e:  # XLA raises several types
        raise UnsupportedModelError(
            f"{reason}; and XLA cannot compile it whole either ({first_line(e)}). Run the ops "
            "without a CPU kernel (e.g. NCHW or float16 convolutions) in a form TensorFlow's "
            "CPU kernels support, or keep every op of the function compilable by XLA",
            pass_name,
        ) from e


def _lost_callback_message(error: tf.errors.OpError) -> str:
    """What to do about a tf.py_function whose Python code this process does not have."""
    node = re.search(r"\{\{node ([^}]+)\}\}", str(error)) or re.search(r"at node (\S+)", str(error))
    where = f" (node {node.group(1)})" if node else ""
    return (
        f"the model calls a Python function{where}, made by tf.py_function or tf.numpy_function, "
        "that a SavedModel does not keep: it only runs in the Python process that defined it. "
        "Write it with TensorFlow ops, or trace the model in that process "
        "(kiln_worker.trace(model, example_inputs)); the traced model keeps the call on CPU "
        "and also runs only there"
    )


def run_reference(concrete: Any, args: list[tf.Tensor]) -> Reference:
    """The original's outputs on the example inputs (a flat list), and their source."""
    # Called as it is, so a model's own error keeps TensorFlow's whole message (the node, where
    # the user's code defined it, the text the model raised).
    outputs, reason = call_with_xla_fallback(concrete, args, in_graph=False)
    arrays = [np.asarray(t.numpy()) for t in outputs]
    varying = (False,) * len(arrays)
    if reason is None:  # a second run compiled whole by XLA would cost a second compile
        again = concrete(*args)
        varying = tuple(not same_values(a, b.numpy()) for a, b in zip(arrays, again, strict=True))
    if any(varying):
        logger.info("outputs %s differ between two runs: compared by shape only",
                    [i for i, v in enumerate(varying) if v])
    return Reference(arrays, "xla" if reason else "tensorflow", reason, varying)
