"""Errors of the Kiln service, and the one handler that answers them as RFC 9457 problems.

Tree::

    KilnServiceError                 500 internal_error
    ├── BadRequestError              400 bad_request
    ├── UnauthorizedError            401 unauthorized (with ``WWW-Authenticate: Bearer``)
    ├── NotFoundError                404 not_found
    │   ├── JobNotFoundError         404 job_not_found
    │   └── ArtifactNotFoundError    404 artifact_not_found
    ├── ConflictError                409 conflict
    │   ├── JobStateError            409 job_state_conflict
    │   ├── IdempotencyInFlightError 409 idempotency_key_in_flight
    │   ├── UploadRequiredError      409 upload_required (``model_digest`` missed the cache)
    │   └── DuplicateIdempotencyKeyError 409 (a race, resolved by the route)
    ├── RequestTimeoutError          408 upload_stalled (the body stopped arriving)
    ├── PayloadTooLargeError         413 payload_too_large
    ├── UnsupportedMediaTypeError    415 unsupported_media_type
    ├── RangeNotSatisfiableError     416 range_not_satisfiable
    ├── UploadRejectedError          422 (code given per case: invalid_archive, unknown_signature…)
    │   └── IdempotencyKeyReusedError 422 idempotency_key_reused
    ├── TooManyRequestsError         429 rate_limited / too_many_active_jobs (with ``Retry-After``)
    ├── InsufficientStorageError     507 insufficient_storage (disk full; ``Retry-After``)
    ├── StoreError                   503 store_unavailable
    └── DependencyUnavailableError   503 dependency_unavailable
        └── NoWorkerForTargetError   503 no_worker_for_target

The exception classes import nothing from FastAPI so that the stores (used by the worker too)
can raise them; :func:`install_error_handlers` wires them into an app.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI, Request
    from starlette.responses import Response

__all__ = [
    "ArtifactNotFoundError",
    "BadRequestError",
    "ConflictError",
    "DependencyUnavailableError",
    "DuplicateIdempotencyKeyError",
    "IdempotencyInFlightError",
    "IdempotencyKeyReusedError",
    "InsufficientStorageError",
    "JobNotFoundError",
    "JobStateError",
    "KilnServiceError",
    "NoWorkerForTargetError",
    "NotFoundError",
    "PayloadTooLargeError",
    "RangeNotSatisfiableError",
    "RequestTimeoutError",
    "StoreError",
    "TooManyRequestsError",
    "UnauthorizedError",
    "UnsupportedMediaTypeError",
    "UploadRejectedError",
    "UploadRequiredError",
    "install_error_handlers",
    "problem_response",
    "problem_type",
]

logger = logging.getLogger(__name__)
PROBLEM_MEDIA_TYPE = "application/problem+json"
#: the API path of the error catalogue page; every problem's ``type`` is an anchor on it
ERRORS_PATH = "/docs/errors"


class KilnServiceError(Exception):
    """Root of the service's errors; answered as a problem document with ``code``."""

    status_code: int = 500
    code: str = "internal_error"
    #: Seconds for a ``Retry-After`` header (503s: the dependency may be back shortly).
    retry_after: int | None = None

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        self.errors = errors
        self.headers = headers or {}
        if self.retry_after is not None:
            self.headers.setdefault("Retry-After", str(self.retry_after))


class BadRequestError(KilnServiceError):
    """The request is malformed (not a multipart body, a broken cursor…)."""

    status_code = 400
    code = "bad_request"


class UnauthorizedError(KilnServiceError):
    """No API key, or one that is unknown or revoked (the detail says how to get one)."""

    status_code = 401
    code = "unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="kiln"'})


class NotFoundError(KilnServiceError):
    """The resource does not exist (or is not visible to the caller)."""

    status_code = 404
    code = "not_found"


class JobNotFoundError(NotFoundError):
    """No job with that id (for this tenant)."""

    code = "job_not_found"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"No job with id {job_id!r}. List your jobs with GET /v1/jobs.")
        self.job_id = job_id


class ArtifactNotFoundError(NotFoundError):
    """The job has no artifact of that name."""

    code = "artifact_not_found"


class ConflictError(KilnServiceError):
    """The request conflicts with the current state of a resource."""

    status_code = 409
    code = "conflict"


class JobStateError(ConflictError):
    """The job's status does not allow the operation (cancel a finished job, delete a running one)."""

    code = "job_state_conflict"


class IdempotencyInFlightError(ConflictError):
    """A request with the same ``Idempotency-Key`` is still being processed."""

    code = "idempotency_key_in_flight"
    retry_after = 2


class DuplicateIdempotencyKeyError(ConflictError):
    """Another request created a job with this ``Idempotency-Key`` first (a race)."""

    code = "idempotency_key_in_flight"
    retry_after = 1

    def __init__(self, key: str) -> None:
        super().__init__(f"a job with Idempotency-Key {key!r} was created concurrently; retry")
        self.key = key


class UploadRequiredError(ConflictError):
    """``POST /v1/compile`` sent ``model_digest`` instead of the model, and the tenant's compile
    cache does not answer it: nothing was stored; the client sends the model."""

    code = "upload_required"


class RequestTimeoutError(KilnServiceError):
    """The request body stopped arriving; the connection is closed after the answer."""

    status_code = 408
    code = "upload_stalled"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Connection": "close"})


class PayloadTooLargeError(KilnServiceError):
    """An upload or the request body is over its size cap."""

    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaTypeError(KilnServiceError):
    """The request body is not of an accepted media type."""

    status_code = 415
    code = "unsupported_media_type"


class RangeNotSatisfiableError(KilnServiceError):
    """The ``Range`` header does not fit the artifact."""

    status_code = 416
    code = "range_not_satisfiable"


class UploadRejectedError(KilnServiceError):
    """The upload or a form field fails the checks made before queueing."""

    status_code = 422
    code = "invalid_request"


class IdempotencyKeyReusedError(UploadRejectedError):
    """The ``Idempotency-Key`` was already used for a request with another body."""

    code = "idempotency_key_reused"


class TooManyRequestsError(KilnServiceError):
    """The tenant submits too fast or has too many unfinished jobs; retry after ``retry_after``."""

    status_code = 429
    code = "rate_limited"

    def __init__(self, detail: str, *, retry_after: int, code: str | None = None) -> None:
        super().__init__(detail, code=code, headers={"Retry-After": str(max(1, retry_after))})


class InsufficientStorageError(KilnServiceError):
    """The server's disk is full: the upload was discarded; retry after ``retry_after``."""

    status_code = 507
    code = "insufficient_storage"
    retry_after = 60


class StoreError(KilnServiceError):
    """The job store or artifact store failed or is unreachable."""

    status_code = 503
    code = "store_unavailable"
    retry_after = 5


class DependencyUnavailableError(KilnServiceError):
    """A dependency (database, broker, storage) is down; retry later."""

    status_code = 503
    code = "dependency_unavailable"
    retry_after = 5


class NoWorkerForTargetError(DependencyUnavailableError):
    """No live worker serves the job's target and the service refuses such jobs."""

    code = "no_worker_for_target"
    retry_after = 30


def problem_response(
    request: Request,
    *,
    status: int,
    code: str,
    detail: str | None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """Build an ``application/problem+json`` response.

    Args:
        request: The request being answered (for ``instance`` and ``request_id``).
        status: HTTP status code.
        code: Stable machine code.
        detail: What went wrong and what to do about it.
        errors: Field-level errors, if any.
        headers: Extra response headers.

    Returns:
        The response.
    """
    from fastapi.encoders import jsonable_encoder
    from starlette.responses import JSONResponse

    request_id = getattr(request.state, "request_id", None)
    body: dict[str, Any] = {
        "type": problem_type(request, code),
        "title": _title(status),
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        "code": code,
        "request_id": request_id,
    }
    if errors is not None:
        body["errors"] = errors
    all_headers = dict(headers or {})
    if request_id:
        all_headers["X-Request-ID"] = request_id
    return JSONResponse(
        jsonable_encoder(body), status_code=status, headers=all_headers, media_type=PROBLEM_MEDIA_TYPE
    )


def problem_type(request: Request, code: str) -> str:
    """The problem ``type`` URI of ``code``: its entry on this server's error catalogue page.

    Built from the request's base URL (scheme, host and any ``root_path`` the server runs under),
    so it resolves wherever the client reached the API.
    """
    return f"{str(request.base_url).rstrip('/')}{ERRORS_PATH}#{code}"


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    503: "service_unavailable",
}


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` as a problem document.

    One handler covers the service's own errors, FastAPI's validation errors, Starlette's HTTP
    errors (404 for unknown routes, 405) and anything unexpected (500, logged with its traceback).

    Args:
        app: The application to configure.
    """
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    async def handle(request: Request, exc: Exception) -> Response:
        if isinstance(exc, KilnServiceError):
            if exc.status_code >= 500:
                logger.warning("request %s failed: %s", request.url.path, exc.detail)
            return problem_response(
                request, status=exc.status_code, code=exc.code, detail=exc.detail,
                errors=exc.errors, headers=exc.headers,
            )
        if isinstance(exc, RequestValidationError):
            errors = [
                {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
                for e in exc.errors()
            ]
            detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
            return problem_response(
                request, status=422, code="invalid_request", detail=detail, errors=errors
            )
        if isinstance(exc, StarletteHTTPException):
            return problem_response(
                request, status=exc.status_code, code=_HTTP_CODES.get(exc.status_code, "http_error"),
                detail=str(exc.detail), headers=dict(exc.headers or {}),
            )
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            request, status=500, code="internal_error",
            detail="Kiln hit an unexpected error; report the request_id if it persists.",
        )

    app.add_exception_handler(KilnServiceError, handle)
    app.add_exception_handler(RequestValidationError, handle)
    app.add_exception_handler(StarletteHTTPException, handle)
    app.add_exception_handler(Exception, handle)
