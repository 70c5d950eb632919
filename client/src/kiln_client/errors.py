"""Exceptions raised by the Kiln SDK.

Every exception derives from :class:`KilnError`, so ``except kiln_client.KilnError`` catches them
all. "The API refused or failed" is kept apart from "your compile job failed"::

    KilnError
    ├── InputError (ValueError)            the model or inputs given to compile() are unusable
    ├── ChecksumError                      a download does not match its sha256
    ├── APIError                           talking to the service went wrong
    │   ├── APIConnectionError             no answer: refused, dropped, DNS, TLS
    │   │   └── APITimeoutError (TimeoutError)
    │   └── APIStatusError                 an HTTP 4xx/5xx answer (problem+json)
    │       ├── BadRequestError            400
    │       ├── AuthenticationError        401
    │       ├── PermissionDeniedError      403
    │       ├── NotFoundError              404
    │       ├── ConflictError              409
    │       ├── PayloadTooLargeError       413
    │       ├── ValidationError            422
    │       ├── RateLimitError             429
    │       └── InternalServerError        5xx
    └── JobError                           a job did not end as hoped
        ├── JobFailed (= CompileFailedError)   status ``failed``: reason + log tail
        ├── JobCancelled                   status ``cancelled``
        └── WaitTimeout (TimeoutError)     wait() gave up; the job goes on

``make_status_error`` is the one place where HTTP answers become exceptions.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import httpx

from kiln_client.models import Problem

if TYPE_CHECKING:
    from kiln_client._jobs import AsyncJob, Job

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ChecksumError",
    "CompileFailedError",
    "ConflictError",
    "InputError",
    "InternalServerError",
    "JobCancelled",
    "JobError",
    "JobFailed",
    "KilnError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "ValidationError",
    "WaitTimeout",
    "make_status_error",
]


class KilnError(Exception):
    """Root of every exception raised by ``kiln_client``."""


class InputError(KilnError, ValueError):
    """The model or example inputs given to ``compile()`` cannot be sent as they are."""


class ChecksumError(KilnError):
    """A downloaded artifact does not match the sha256 the service announced."""

    def __init__(self, name: str, expected: str, actual: str) -> None:
        super().__init__(
            f"{name}: sha256 mismatch (expected {expected}, got {actual}); "
            "the download was corrupted, try again"
        )
        self.name = name
        self.expected = expected
        self.actual = actual


class APIError(KilnError):
    """Talking to the Kiln service failed."""

    def __init__(self, message: str, *, request: httpx.Request | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request = request


class APIConnectionError(APIError):
    """The service could not be reached, or the connection dropped before an answer."""

    def __init__(self, message: str = "Connection error.", *, request: httpx.Request | None = None) -> None:
        super().__init__(message, request=request)


class APITimeoutError(APIConnectionError, TimeoutError):
    """The request timed out (see ``Client(timeout=...)``)."""

    def __init__(self, request: httpx.Request | None = None) -> None:
        super().__init__("Request timed out.", request=request)


class APIStatusError(APIError):
    """The service answered with an HTTP error status; ``problem`` holds its problem+json.

    Attributes:
        status_code: the HTTP status.
        code: the machine code of the problem (such as ``invalid_archive``), or ``None``.
        request_id: the service's request id, to quote when reporting a problem.
        problem: the parsed problem document, when the body was one.
        errors: field-level validation errors, when any.
    """

    def __init__(self, message: str, *, response: httpx.Response, problem: Problem | None) -> None:
        super().__init__(message, request=getattr(response, "_request", None))
        self.response = response
        self.status_code = response.status_code
        self.problem = problem
        self.code = problem.code if problem else None
        self.errors = problem.errors if problem else None
        self.request_id = (problem.request_id if problem else None) or response.headers.get(
            "x-request-id"
        )

    def __str__(self) -> str:
        suffix = f" (request id {self.request_id})" if self.request_id else ""
        return f"{self.message}{suffix}"


class BadRequestError(APIStatusError):
    """400: the request was malformed."""


class AuthenticationError(APIStatusError):
    """401: missing or wrong API key (``KILN_API_KEY``)."""


class PermissionDeniedError(APIStatusError):
    """403: the key may not do this."""


class NotFoundError(APIStatusError):
    """404: no such job or artifact."""


class ConflictError(APIStatusError):
    """409: the job is in the wrong state for this (for example deleting a running job)."""


class PayloadTooLargeError(APIStatusError):
    """413: an uploaded file is over the service's size cap."""


class ValidationError(APIStatusError):
    """422: the model, inputs, flags or fields were refused; see ``errors`` and ``detail``."""


class RateLimitError(APIStatusError):
    """429: too many requests; retried automatically, raised when retries run out."""


class InternalServerError(APIStatusError):
    """5xx: the service failed; retried automatically, raised when retries run out."""


_STATUS_CLASSES: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: ValidationError,
    429: RateLimitError,
}


def _parse_problem(response: httpx.Response) -> Problem | None:
    """The problem document of ``response``, or ``None`` when the body is not one."""
    try:
        body: Any = json.loads(response.content or b"null")
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    body.setdefault("status", response.status_code)
    body.setdefault("title", response.reason_phrase or "Error")
    body.setdefault("code", f"http_{response.status_code}")
    try:
        return Problem.model_validate(body)
    except ValueError:
        return None


def _describe(response: httpx.Response, problem: Problem | None) -> str:
    """One line saying what went wrong, the problem's detail first."""
    if problem is not None:
        text = problem.detail or problem.title
        if problem.errors:
            parts = []
            for err in problem.errors[:5]:
                loc = ".".join(str(p) for p in err.get("loc", []) if p not in ("body",))
                msg = err.get("msg") or err.get("message") or err.get("detail") or ""
                parts.append(f"{loc}: {msg}" if loc else str(msg))
            text = f"{text} ({'; '.join(parts)})"
        return f"{response.status_code} {problem.code}: {text}"
    snippet = response.text[:200].strip() if response.content else ""
    phrase = response.reason_phrase or "HTTP error"
    return f"{response.status_code} {phrase}" + (f": {snippet}" if snippet else "")


def make_status_error(response: httpx.Response) -> APIStatusError:
    """Turn an HTTP error answer into the matching :class:`APIStatusError` subclass.

    The body must have been read. The problem's ``request_id`` (or the ``X-Request-ID`` header)
    is kept on the exception.

    Args:
        response: an answer with status 400 or above.

    Returns:
        The exception to raise.
    """
    problem = _parse_problem(response)
    status = response.status_code
    cls = _STATUS_CLASSES.get(status)
    if cls is None:
        cls = InternalServerError if status >= 500 else APIStatusError
    return cls(_describe(response, problem), response=response, problem=problem)


class JobError(KilnError):
    """A job did not end as the caller hoped; ``job`` is its latest state."""

    def __init__(self, message: str, job: Job | AsyncJob) -> None:
        super().__init__(message)
        self.job = job


class JobFailed(JobError):
    """The compile job failed. ``reason`` says why; ``log_tail`` holds the end of its log.

    Attributes:
        reason: the failure message, in words a person can act on.
        code: the failure's machine code (such as ``UnsupportedModel``).
        kind: ``client_error`` (change the model, inputs or flags) or ``system_error``.
        log_tail: the last lines of the compile log (may be empty).
    """

    def __init__(self, job: Job | AsyncJob, log_tail: list[str] | None = None) -> None:
        failure = job.failure
        self.reason = failure.message if failure else "the job failed without a reason"
        self.code = failure.code if failure else None
        self.kind = failure.kind.value if failure else None
        self.log_tail = list(log_tail or [])
        where = f" [{self.kind}/{self.code}]" if failure else ""
        super().__init__(f"job {job.id} failed{where}: {self.reason}", job)


#: The name used in Kiln's design documents for a failed compile; the same class as JobFailed.
CompileFailedError = JobFailed


class JobCancelled(JobError):
    """The job was cancelled before it finished."""

    def __init__(self, job: Job | AsyncJob) -> None:
        super().__init__(f"job {job.id} was cancelled", job)


class WaitTimeout(JobError, TimeoutError):
    """``wait()`` ran out of time; the job itself goes on (``job.cancel()`` to stop it)."""

    def __init__(self, job: Job | AsyncJob, waited: float) -> None:
        super().__init__(
            f"job {job.id} still {job.status.value} after waiting {waited:.0f}s", job
        )
        self.waited = waited
