"""Errors raised by the tracer.

Tree::

    TraceError                      root of every tracer error (``pass_name``, ``subgraph``)
    ├── TraceInputError             the caller's func / example_inputs do not fit the API
    ├── UnsupportedModelError       the model holds something the tracer cannot freeze or run
    ├── ModelExecutionError         the model itself raised an error on the example inputs
    ├── SubgraphCompileError        a backend failed to compile one subgraph
    └── BackendUnavailableError     the requested backend is not installed on this host

:func:`model_error_text` gives TensorFlow's whole message (error type, node, the model's own text)
without the generic parts; :func:`pass_error` turns any exception escaping a pass into one of these.

All of them pickle (Celery sends them between processes): every constructor argument is kept in
``self.args`` in order, so ``pickle`` rebuilds the same error.
"""

from __future__ import annotations

import re

__all__ = [
    "BackendUnavailableError",
    "ModelExecutionError",
    "SubgraphCompileError",
    "TraceError",
    "TraceInputError",
    "UnsupportedModelError",
    "model_error_text",
    "pass_error",
]

#: the passes that run the user's function on the example inputs (its errors are the model's)
MODEL_PASSES = frozenset({"inputs"})
#: the longest message kept (head and tail survive; the middle is elided)
MAX_MESSAGE_CHARS = 4000

_FRAME = re.compile(r'^\s*File "(?P<path>[^"]*)", line \d+')
_DETECTED = re.compile(r"^(Detected at node .*?) defined at \(most recent call last\):\s*$")
_GENERIC = {"Graph execution error:", "in user code:", "<stack traces unavailable>"}
_INTERNAL_PATHS = ("/kiln_worker/", "/site-packages/", "/dist-packages/", "<frozen ")


class TraceError(Exception):
    """Root of the tracer's errors.

    Args:
        message: what went wrong and what to do about it.
        pass_name: the tracer pass that raised it (``inputs``, ``freeze``, ``compile`` ...).
        subgraph: the subgraph concerned, when there is one.
    """

    def __init__(self, message: str, pass_name: str | None = None, subgraph: str | None = None):
        super().__init__(message, pass_name, subgraph)
        self.message = message
        self.pass_name = pass_name
        self.subgraph = subgraph

    def __str__(self) -> str:
        where = ""
        if self.pass_name:
            where = f"[{self.pass_name}"
            where += f" / {self.subgraph}] " if self.subgraph else "] "
        return where + self.message


class TraceInputError(TraceError, ValueError):
    """``func`` or ``example_inputs`` do not follow the calling conventions of ``trace``."""


class UnsupportedModelError(TraceError):
    """The model contains state or ops the tracer cannot freeze (e.g. a lookup table)."""


class SubgraphCompileError(TraceError):
    """A backend could not compile one subgraph."""


class BackendUnavailableError(TraceError):
    """The requested compiler backend cannot be used on this machine."""


class ModelExecutionError(TraceError):
    """The model itself failed on the example inputs (a failed assertion, an impossible reshape).

    The message is TensorFlow's, whole: the error type, the node and the model's own text.
    """


def model_error_text(exc: BaseException) -> str:
    """TensorFlow's whole message for ``exc``, as ``Type: message``, minus the generic parts.

    Keeps the op, the node (``Detected at node …``, ``[[{{node …}}]]``) and the text the model
    raised; drops "Graph execution error:", and stack frames inside Kiln, TensorFlow or other
    installed packages (the user's own frames stay). Long messages keep their head and tail.
    """
    text = str(exc).strip()
    kept: list[str] = []
    skip_code = False
    for line in text.splitlines():
        frame = _FRAME.match(line)
        if frame:
            skip_code = any(p in frame.group("path") for p in _INTERNAL_PATHS)
            if not skip_code:
                kept.append(line.rstrip())
            continue
        if skip_code and line.startswith("        ") and line.strip():
            continue  # the source line under a dropped frame
        skip_code = False
        if line.strip() in _GENERIC:
            continue
        detected = _DETECTED.match(line.strip())
        kept.append(detected.group(1) + ":" if detected else line.rstrip())
    body = re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip() or type(exc).__name__
    name = type(exc).__name__
    if f"{name}: " not in body:
        body = f"{name}: {body}"
    if len(body) > MAX_MESSAGE_CHARS:
        half = MAX_MESSAGE_CHARS // 2
        body = f"{body[:half]}\n…\n{body[-half:]}"
    return body


def pass_error(exc: Exception, pass_name: str) -> TraceError:
    """The tracer error for ``exc`` escaping pass ``pass_name`` (a ``TraceError`` is kept).

    A TensorFlow runtime error in a pass that runs the user's function is the model's own
    (:class:`ModelExecutionError`); anything else is a :class:`TraceError` naming the pass.
    """
    if isinstance(exc, TraceError):
        return exc
    if pass_name in MODEL_PASSES and _is_tf_op_error(exc):
        return ModelExecutionError(
            f"the model failed on the example inputs: {model_error_text(exc)}", pass_name)
    return TraceError(model_error_text(exc), pass_name)


def _is_tf_op_error(exc: BaseException) -> bool:
    # Without importing TensorFlow: tf.errors.OpError and its subclasses.
    return any(c.__name__ == "OpError" and c.__module__.startswith("tensorflow.")
               for c in type(exc).__mro__)
