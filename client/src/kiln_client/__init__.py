"""Kiln client: compile TensorFlow models with the Kiln service from Python or the shell.

Example::

    import kiln_client

    client = kiln_client.Client()              # KILN_URL, KILN_API_KEY
    job = client.compile("./saved_model", example_inputs=x, flags="--dynamic-batch-size")
    compiled_dir = job.download("./compiled")  # sha256-verified, extracted SavedModel

TensorFlow is never imported here; it is used only to save a keras.Model or tf.function you pass
to ``compile()`` (and is then already loaded by your program).
"""

from __future__ import annotations

from kiln_client import webhooks
from kiln_client._client import AsyncClient, Client
from kiln_client._jobs import AsyncJob, Job
from kiln_client._resources import AsyncJobs, Jobs
from kiln_client.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ChecksumError,
    CompileFailedError,
    ConflictError,
    InputError,
    InternalServerError,
    JobCancelled,
    JobError,
    JobFailed,
    KilnError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ValidationError,
    WaitTimeout,
)
from kiln_client.events import EndEvent, LogEvent, StageEvent, StatusEvent
from kiln_client.flags import CompilerFlags, FlagsError, parse_flags
from kiln_client.models import (
    Artifact,
    Failure,
    FailureCode,
    FailureKind,
    JobStatus,
    PlacementSpec,
    Stage,
)

__version__ = "0.2.0"

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "Artifact",
    "AsyncClient",
    "AsyncJob",
    "AsyncJobs",
    "AuthenticationError",
    "BadRequestError",
    "ChecksumError",
    "Client",
    "CompileFailedError",
    "CompilerFlags",
    "ConflictError",
    "EndEvent",
    "Failure",
    "FailureCode",
    "FailureKind",
    "FlagsError",
    "InputError",
    "InternalServerError",
    "Job",
    "JobCancelled",
    "JobError",
    "JobFailed",
    "JobStatus",
    "Jobs",
    "KilnError",
    "LogEvent",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PlacementSpec",
    "RateLimitError",
    "Stage",
    "StageEvent",
    "StatusEvent",
    "ValidationError",
    "WaitTimeout",
    "__version__",
    "parse_flags",
    "webhooks",
]
