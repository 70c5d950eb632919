"""Run a function where it can run: with TensorFlow's own kernels, else compiled whole by XLA.

An accelerator runs ops that TensorFlow's CPU executor has no kernel for (a float16 NCHW
convolution, say), so the tracer must not need those kernels. The original's reference outputs,
and the values at subgraph boundaries, come from TensorFlow when it can run the function, and from
XLA (``tf.function(jit_compile=True)``) when it cannot; the caller records which and why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from kiln_worker.tracer.errors import UnsupportedModelError

__all__ = ["Reference", "call_with_xla_fallback", "lacks_cpu_kernel", "run_reference"]

logger = logging.getLogger(__name__)
#: Words of TensorFlow's messages for an op it has no (usable) CPU kernel for.
_KERNEL_HINTS = ("OpKernel", "only supports", "on the CPU", "on CPU", "kernel for")


@dataclass(frozen=True)
class Reference:
    """Outputs of the original, and what computed them (``tensorflow`` or ``xla``, and why)."""

    outputs: list[np.ndarray]
    source: str
    reason: str | None


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
        UnsupportedModelError: neither TensorFlow's kernels nor XLA can run it.
        tf.errors.OpError: the function's own error (a failed assertion, a bad shape).
    """
    try:
        return (tf.function(fn, autograph=False) if in_graph else fn)(*args), None
    except tf.errors.OpError as e:
        if not lacks_cpu_kernel(e):
            raise
        return _with_xla(fn, args, e, pass_name)


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


def run_reference(concrete: Any, args: list[tf.Tensor]) -> Reference:
    """The original's outputs on the example inputs (a flat list), and their source."""
    # Called as it is, so a model's own error keeps TensorFlow's whole message (the node, where
    # the user's code defined it, the text the model raised).
    outputs, reason = call_with_xla_fallback(concrete, args, in_graph=False)
    arrays = [np.asarray(t.numpy()) for t in outputs]
    return Reference(arrays, "xla" if reason else "tensorflow", reason)
