"""Models that are not uploaded, and S3 locations: ``model_url``, ``mlflow_model``, ``output_location``.

``POST /v1/compile`` calls :func:`fetch_model` once its form is parsed: a model named by
``model_url`` (``s3://bucket/key``, an archive as an upload would be) or ``mlflow_model``
(``models:/NAME/VERSION``) is fetched into the request's staging folder with the service's own
credentials and becomes the form's ``model`` file, so it passes exactly the checks an upload
passes (:mod:`kiln_service.ingest`). Buckets must be in ``KILN_S3_ALLOWED_BUCKETS``, for reading
and for ``output_location`` alike; anything else is a 422 ``bucket_not_allowed`` saying so.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kiln_client.models import CompileRequest
from kiln_service.config import Settings
from kiln_service.errors import (
    DependencyUnavailableError,
    PayloadTooLargeError,
    UploadRejectedError,
)
from kiln_service.uploads import ReceivedFile, ReceivedForm

__all__ = ["S3Location", "check_sources", "fetch_model", "pipeline_of", "s3_location"]

logger = logging.getLogger(__name__)
CHUNK = 1024 * 1024


class S3Location:
    """An allowed ``s3://bucket/key`` (or ``s3://bucket/prefix``)."""

    def __init__(self, bucket: str, key: str) -> None:
        self.bucket, self.key = bucket, key

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def s3_location(url: str, settings: Settings, *, field: str, prefix: bool = False) -> S3Location:
    """Parse an ``s3://`` URL of a job and check its bucket against the allow-list.

    Args:
        url: The URL the job gave.
        settings: ``KILN_S3_ALLOWED_BUCKETS``.
        field: The form field, for the message.
        prefix: Whether the URL names a prefix (``output_location``) rather than one object.

    Returns:
        The location.

    Raises:
        UploadRejectedError: Not ``s3://bucket/key`` (``invalid_model_source``), or a bucket the
            operator has not allowed (``bucket_not_allowed``).
    """
    parts = urlsplit(url)
    key = parts.path.strip("/") if prefix else parts.path.lstrip("/")
    if parts.scheme != "s3" or not parts.netloc or parts.query or (not prefix and not key):
        shape = "s3://bucket/prefix" if prefix else "s3://bucket/key"
        raise UploadRejectedError(f"{field} {url!r} is not an S3 URL of the form {shape}",
                                  code="invalid_model_source")
    if parts.netloc not in settings.allowed_buckets:
        allowed = ", ".join(sorted(settings.allowed_buckets)) or "none"
        raise UploadRejectedError(
            f"{field}: bucket {parts.netloc!r} is not one this Kiln may use (allowed: {allowed}); "
            f"an operator allows it by adding it to KILN_S3_ALLOWED_BUCKETS (comma-separated) "
            "and giving the service's credentials access to it", code="bucket_not_allowed")
    return S3Location(parts.netloc, key)


def check_sources(req: CompileRequest, settings: Settings, *, uploaded: bool) -> None:
    """Check the pipeline fields of a request before anything is fetched.

    Args:
        req: The request.
        settings: The allow-list and the MLflow server.
        uploaded: Whether a ``model`` file part was sent.

    Raises:
        UploadRejectedError: Several model sources, a malformed or unallowed location, or MLflow
            asked for on a Kiln without an MLflow server.
    """
    given = [name for name, on in (("a model file", uploaded), ("model_url", req.model_url),
                                    ("mlflow_model", req.mlflow_model),
                                    ("model_digest", req.model_digest)) if on]
    if len(given) > 1:
        raise UploadRejectedError(f"give the model one way, not {' and '.join(given)}",
                                  code="invalid_model_source")
    if req.model_url is not None:
        s3_location(req.model_url, settings, field="model_url")
    if req.output_location is not None:
        s3_location(req.output_location, settings, field="output_location", prefix=True)
    if (req.mlflow_model or req.mlflow_register) and not settings.mlflow_tracking_uri:
        raise UploadRejectedError("this Kiln has no MLflow server; an operator sets "
                                  "KILN_MLFLOW_TRACKING_URI to use mlflow_model or "
                                  "mlflow_register", code="invalid_model_source")
    if req.mlflow_model is not None:
        from kiln_service.mlflow_registry import parse_model_uri

        parse_model_uri(req.mlflow_model)
    if req.mlflow_register is not None and not 0 < len(req.mlflow_register) <= 256:
        raise UploadRejectedError("mlflow_register must be a model name of 1 to 256 characters",
                                  code="invalid_model_source")


def pipeline_of(req: CompileRequest) -> dict[str, Any]:
    """The job's ``pipeline`` record: where the model came from and where outputs go."""
    values = {"model_source": req.model_url or req.mlflow_model,
              "output_location": req.output_location, "mlflow_register": req.mlflow_register}
    return {k: v for k, v in values.items() if v is not None}


def fetch_model(form: ReceivedForm, req: CompileRequest, settings: Settings, staging: Path,
                job_id: str) -> None:
    """Check the request's pipeline fields; fetch a model not uploaded into ``form.files``.

    Blocking (run it in a thread). The fetched file lands in ``staging`` under the job id, like
    an upload's spool, and ``form.cleanup()`` removes it.

    Raises:
        UploadRejectedError: See :func:`check_sources`; the object or model version does not
            exist or cannot be read (``model_source_not_found``).
        PayloadTooLargeError: The model is larger than ``KILN_MAX_UPLOAD_BYTES``.
        DependencyUnavailableError: The object store or MLflow server failed.
    """
    check_sources(req, settings, uploaded="model" in form.files)
    target = staging / f"{job_id}-model-source"
    if req.model_url is not None:
        location = s3_location(req.model_url, settings, field="model_url")
        received = _fetch_s3(location, target, settings.max_upload_bytes)
    elif req.mlflow_model is not None:
        from kiln_service.mlflow_registry import MlflowRegistry

        try:
            with MlflowRegistry.from_settings(settings) as registry:
                received = registry.fetch_saved_model(
                    req.mlflow_model, target, staging / f"{job_id}-mlflow",
                    max_bytes=settings.max_upload_bytes)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
    else:
        return
    form.files["model"] = received
    logger.info("model fetched from %s (%d bytes)", req.model_url or req.mlflow_model, received.size)


def s3_client() -> Any:
    """A boto3 client with the service's credentials (boto3's environment)."""
    from kiln_service.stores._s3_io import make_client

    return make_client("auto")


def _fetch_s3(location: S3Location, target: Path, max_bytes: int) -> ReceivedFile:
    from botocore.exceptions import BotoCoreError, ClientError

    from kiln_service.stores._s3_io import is_not_found

    digest, size = hashlib.sha256(), 0
    try:
        response = s3_client().get_object(Bucket=location.bucket, Key=location.key)
        if int(response.get("ContentLength") or 0) > max_bytes:
            response["Body"].close()
            raise PayloadTooLargeError(f"{location} is larger than the limit of {max_bytes} bytes")
        with open(target, "wb") as out:
            for chunk in response["Body"].iter_chunks(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLargeError(f"{location} is larger than the limit of {max_bytes} bytes")
                digest.update(chunk)
                out.write(chunk)
    except ClientError as exc:
        target.unlink(missing_ok=True)
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if is_not_found(exc) or code in ("AccessDenied", "403", "NoSuchBucket"):
            raise UploadRejectedError(f"model_url {location} cannot be read ({code or exc}): "
                                      "check the key, and that the service's credentials may "
                                      "read it", code="model_source_not_found") from exc
        raise DependencyUnavailableError(f"the object store failed reading {location}: {exc}") from exc
    except BotoCoreError as exc:
        target.unlink(missing_ok=True)
        raise DependencyUnavailableError(f"the object store failed reading {location}: {exc}") from exc
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return ReceivedFile(path=target, size=size, sha256=digest.hexdigest(), filename=location.key)
