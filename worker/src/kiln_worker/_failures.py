"""The worker's one classifier: an exception → the job's :class:`~kiln_client.models.Failure`.

The codes come from the closed catalogue :class:`kiln_client.codes.FailureCode`; each code fixes
its kind, so a user's model error is always ``client_error``. Messages keep TensorFlow's whole
text (the error type, the node, the model's own message), through
:func:`kiln_worker.tracer.errors.model_error_text`. Imports no TensorFlow.
"""

from __future__ import annotations

from kiln_client.codes import FailureCode
from kiln_client.models import Failure
from kiln_worker.tracer import errors as tracer_errors
from kiln_worker.tracer.errors import model_error_text

__all__ = ["JobError", "classify_exception", "classify_model_exception", "model_error_text"]

#: a tracer error class → its code (the first match along the class's MRO wins)
_TRACER_CODES: dict[type[tracer_errors.TraceError], FailureCode] = {
    tracer_errors.TraceInputError: FailureCode.INVALID_INPUTS,
    tracer_errors.UnsupportedModelError: FailureCode.UNSUPPORTED_MODEL,
    tracer_errors.ModelExecutionError: FailureCode.MODEL_ERROR,
    tracer_errors.BackendUnavailableError: FailureCode.BACKEND_UNAVAILABLE,
    tracer_errors.TraceError: FailureCode.TRACER_ERROR,
}
_MODEL_EXCEPTIONS = (ValueError, TypeError, IndexError, KeyError)


class JobError(Exception):
    """A failure the compile child understands, reported to the job as its :class:`Failure`.

    Args:
        code: the failure's code; its kind (``client_error`` or ``system_error``) follows.
        message: what went wrong and what to do about it.
    """

    def __init__(self, code: FailureCode | str, message: str) -> None:
        super().__init__(code, message)
        self.code = FailureCode.parse(code)
        self.message = message

    @property
    def kind(self) -> str:
        return self.code.kind.value

    def __str__(self) -> str:
        return self.message

    def failure(self) -> Failure:
        """This error as the job's failure."""
        return Failure.of(self.code, self.message)


def classify_model_exception(exc: BaseException, what: str) -> Failure | None:
    """The failure of running the user's model, or ``None`` if ``exc`` is not the model's.

    Args:
        exc: what running the model raised.
        what: the situation, prefixed to the message (``the model failed on the example inputs``).
    """
    if isinstance(exc, MemoryError) or _is_tf_error(exc, "ResourceExhaustedError"):
        return Failure.of(FailureCode.MEMORY_LIMIT, (
            f"{what}: the model tried to allocate more memory than a compile may use "
            f"({model_error_text(exc)}); reduce the model's or the example inputs' size"))
    if _is_tf_error(exc, "OpError") or isinstance(exc, _MODEL_EXCEPTIONS):
        return Failure.of(FailureCode.MODEL_ERROR, f"{what}: {model_error_text(exc)}")
    return None


def classify_exception(exc: BaseException) -> Failure | None:
    """The failure of a known exception, or ``None`` if it is unexpected (a crash).

    User mistakes (bad inputs or flags, an unsupported model, a model that raises its own error,
    memory over the limit) are ``client_error``; other tracer errors are ``system_error``.
    """
    if isinstance(exc, JobError):
        return exc.failure()
    if isinstance(exc, MemoryError):
        return classify_model_exception(exc, "the compile ran out of memory")
    if type(exc).__name__ == "FlagsError":
        return Failure.of(FailureCode.INVALID_FLAGS, str(exc))
    if not isinstance(exc, tracer_errors.TraceError):
        return None
    cause = exc.__cause__
    if isinstance(exc, tracer_errors.ModelExecutionError) and cause is not None:
        memory = classify_model_exception(cause, "the model failed on the example inputs")
        if memory is not None and memory.code is FailureCode.MEMORY_LIMIT:
            return memory
    code = next(_TRACER_CODES[c] for c in type(exc).__mro__ if c in _TRACER_CODES)
    return Failure.of(code, str(exc))


def _is_tf_error(exc: BaseException, name: str) -> bool:
    """Whether ``exc`` is TensorFlow's ``tf.errors.<name>`` (or a subclass), without importing it."""
    return any(c.__name__ == name and c.__module__.startswith("tensorflow.")
               for c in type(exc).__mro__)
