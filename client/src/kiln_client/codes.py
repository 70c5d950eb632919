"""The closed catalogues of Kiln's error codes: job failures and API problems.

A failed job carries a :class:`FailureCode` (PascalCase, in ``Job.failure.code``); a refused or
failed HTTP request carries a :class:`ProblemCode` (snake_case, in the problem document's
``code``). Each member knows what it means and what to do about it; the service renders both
catalogues as its ``/docs/errors`` page (``docs/errors.md`` in the repository is the same text),
and every problem's ``type`` URI points at its code's entry there.

Sets such as :data:`CLIENT_ERROR_CODES` are derived from the members, never listed again.
"""

from __future__ import annotations

from enum import Enum

__all__ = [
    "CACHED_FAILURE_CODES",
    "CLIENT_ERROR_CODES",
    "SYSTEM_ERROR_CODES",
    "FailureCode",
    "FailureKind",
]


class FailureKind(str, Enum):
    """Whose move it is after a failure."""

    #: the model, inputs or flags must change (never retried)
    CLIENT_ERROR = "client_error"
    #: Kiln or its infrastructure failed (retried; report it if it persists)
    SYSTEM_ERROR = "system_error"

    def __str__(self) -> str:
        return self.value


_CLIENT, _SYSTEM = FailureKind.CLIENT_ERROR, FailureKind.SYSTEM_ERROR


class FailureCode(str, Enum):
    """Why a job failed: the machine code in ``Job.failure.code``.

    Each member has a ``kind`` (``client_error`` or ``system_error``), a ``meaning`` and an
    ``action`` (what to do), as listed on the service's ``/docs/errors`` page, and says whether
    it is ``deterministic``: the same model, inputs, flags and toolchain always fail so, which
    lets the compile cache answer a resubmission with it at once. Limits, time-outs and crashes
    are not (they depend on the operator's limits, the machine's load or luck).
    """

    kind: FailureKind
    meaning: str
    action: str
    deterministic: bool

    def __new__(cls, code: str, kind: FailureKind, meaning: str, action: str,
                deterministic: bool = False) -> FailureCode:
        member = str.__new__(cls, code)
        member._value_ = code
        member.kind = kind
        member.meaning = meaning
        member.action = action
        member.deterministic = deterministic
        return member

    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def _missing_(cls, value: object) -> FailureCode | None:
        # Codes recorded by older Kiln versions, still readable from a job store.
        renamed = {"OutOfMemory": "MemoryLimit", "Trace": "TracerError",
                   "SubgraphCompile": "TracerError"}
        new = renamed.get(value) if isinstance(value, str) else None
        return next((c for c in cls if c.value == new), None)

    @classmethod
    def parse(cls, value: FailureCode | str) -> FailureCode:
        """The member whose code is ``value`` (``FailureCode(value)``, typed).

        Raises:
            ValueError: not a code of the catalogue.
        """
        return value if isinstance(value, FailureCode) else cls._parse(value)

    @classmethod
    def _parse(cls, value: str) -> FailureCode:
        member: FailureCode = cls(value)  # type: ignore[call-arg]  # by-value lookup
        return member

    # -- client_error: the model, its inputs or the request must change -----------------------

    #: client_error: the upload is not a SavedModel TensorFlow can load
    INVALID_MODEL = (
        "InvalidModel", _CLIENT, "The upload is not a SavedModel that TensorFlow can load.",
        "Save the model with `tf.saved_model.save` (or `model.save(dir)`) and upload that folder "
        "as an archive; the message quotes TensorFlow's reason.", True)
    #: client_error: the requested signature is not in the SavedModel
    UNKNOWN_SIGNATURE = (
        "UnknownSignature", _CLIENT, "The SavedModel has no signature of the requested name.",
        "Pass one of the signatures the message lists as `signature`.", True)
    #: client_error: the example inputs do not fit the signature
    INVALID_INPUTS = (
        "InvalidInputs", _CLIENT,
        "The example inputs (or `input_shapes`) do not match the signature's names, dtypes or "
        "shapes, or cannot be read.",
        "Send one array per signature input, named as the message says, with its dtype and a "
        "compatible shape.", True)
    #: client_error: the NEURON_CC_FLAGS string cannot be used
    INVALID_FLAGS = (
        "InvalidFlags", _CLIENT, "The compiler flags are unknown, malformed or conflict.",
        "Fix the `flags` string; the message lists the flags Kiln accepts.", True)
    #: client_error: the model holds state or ops the tracer cannot handle
    UNSUPPORTED_MODEL = (
        "UnsupportedModel", _CLIENT,
        "The model holds state or ops the tracer cannot freeze or run.",
        "Remove or rewrite the part the message names (the op and node are quoted).", True)
    #: client_error: the model itself raised an error on the example inputs
    MODEL_ERROR = (
        "ModelError", _CLIENT,
        "The model raised an error when run on the example inputs: a failed "
        "`tf.debugging.assert_*`, a reshape to an impossible shape, an out-of-range index. The "
        "message carries TensorFlow's whole text: the error type, the node and the model's own "
        "message.",
        "Run the model on the same inputs in TensorFlow to reproduce it; fix the model or send "
        "inputs it accepts.", True)
    #: client_error: the compile went over the memory limit
    MEMORY_LIMIT = (
        "MemoryLimit", _CLIENT,
        "The compile needed more memory than a compile may use; the message gives the limit and "
        "the peak reached.",
        "Compile a smaller model or smaller example inputs, or ask the operator for a larger "
        "memory limit.")
    #: client_error: the compile started more processes or threads than allowed
    PROCESS_LIMIT = (
        "ProcessLimit", _CLIENT,
        "The compile started more processes or threads than a compile may; the message gives "
        "the limit.",
        "Make the model start fewer threads (for example fewer parallel dataset or py_function "
        "calls), or ask the operator for a larger limit.")
    #: client_error: the compile used up its CPU time
    CPU_TIME_LIMIT = (
        "CpuTimeLimit", _CLIENT, "The compile used more CPU time than a compile may.",
        "Compile a smaller model, or ask the operator for a larger CPU-time limit.")
    #: client_error: the compile wrote a file over the size limit
    FILE_SIZE_LIMIT = (
        "FileSizeLimit", _CLIENT,
        "The compile tried to write a file larger than a compile may write.",
        "Make the model smaller (or use `--extract-weights`), or ask the operator for a larger "
        "file-size limit.")
    #: client_error: the compile ran past its wall-clock limit
    TIME_OUT = (
        "TimeOut", _CLIENT, "The compile ran past its wall-clock time limit and was stopped.",
        "Resubmit with a larger `timeout_seconds` (up to the server's maximum, given in the "
        "message).")
    #: client_error: the compile process died by a signal again on the same job
    CRASHED = (
        "Crashed", _CLIENT,
        "The compile process died by a signal (a segmentation fault, an abort) on repeated "
        "attempts of the same job: the model makes TensorFlow crash. The message names the "
        "signal and quotes the last log lines.",
        "Reproduce it by loading and running the model in TensorFlow; simplify the model.")

    # -- system_error: Kiln or its infrastructure failed; retried ------------------------------

    #: system_error: the compiled model does not run or does not match after reloading
    VERIFICATION_FAILED = (
        "VerificationFailed", _SYSTEM,
        "The compiled model did not run after saving and reloading, or its outputs have other "
        "shapes or names than the original's.",
        "This is Kiln's fault: report it with the job id and its compile log.")
    #: system_error: the tracer failed in one of its passes
    TRACER_ERROR = (
        "TracerError", _SYSTEM, "The tracer failed in one of its passes (named in the message).",
        "This is Kiln's fault: report it with the job id and its compile log.")
    #: system_error: the target's compiler backend is not installed on the worker
    BACKEND_UNAVAILABLE = (
        "BackendUnavailable", _SYSTEM,
        "The compiler backend of the job's target is not installed on the worker that ran it.",
        "The operator must install the backend (the message says what) or route the target to "
        "other workers.")
    #: system_error: the compile process was killed, most likely by the out-of-memory killer
    OOM_KILLED = (
        "OOMKilled", _SYSTEM,
        "The compile process was killed (SIGKILL), most likely by the machine's out-of-memory "
        "killer.",
        "Retried automatically; if it persists, give the worker more memory or compile a "
        "smaller model.")
    #: system_error: the worker or its compile process failed unexpectedly
    WORKER_ERROR = (
        "WorkerError", _SYSTEM,
        "The worker or its compile process failed unexpectedly.",
        "Retried automatically; if it persists, report it with the job id and its compile log.")
    #: system_error: the worker holding the job stopped answering
    WORKER_LOST = (
        "WorkerLost", _SYSTEM,
        "The worker running the job stopped renewing its lease and every attempt was used.",
        "Resubmit; if it persists, the operator should check the workers' health.")
    #: system_error: the upload or the artifacts could not be read or stored
    STORAGE_ERROR = (
        "StorageError", _SYSTEM,
        "The worker could not fetch the upload or store the artifacts (nothing was published).",
        "Retried automatically; the operator should check the artifact store (is it full?).")


#: failure codes whose kind is ``client_error``
CLIENT_ERROR_CODES = frozenset(c for c in FailureCode if c.kind is FailureKind.CLIENT_ERROR)
#: failure codes a compile cache may replay: deterministic client errors
CACHED_FAILURE_CODES = frozenset(c for c in FailureCode if c.deterministic)
#: failure codes whose kind is ``system_error``
SYSTEM_ERROR_CODES = frozenset(c for c in FailureCode if c.kind is FailureKind.SYSTEM_ERROR)
