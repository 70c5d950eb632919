"""``POST /v1/compile``: receive, check and store an upload, create the job, queue it.

A request may send ``model_digest`` instead of the model: it is answered from the tenant's
compile cache, or refused with 409 ``upload_required`` having stored nothing (docs/cache.md).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import uuid
from functools import partial
from pathlib import Path
from typing import Any, get_args

import anyio.to_thread
from fastapi import APIRouter, Request, Response
from pydantic import ValidationError

from kiln_client.flags import FlagsError, parse_flags
from kiln_client.models import CompileRequest, Job, PlacementMode
from kiln_service import cache, idempotency, ingest, sources
from kiln_service._npz import read_npz_headers
from kiln_service.config import TARGETS, Settings
from kiln_service.deps import Services, TenantDep, get_services
from kiln_service.errors import (
    DuplicateIdempotencyKeyError,
    InsufficientStorageError,
    NoWorkerForTargetError,
    PayloadTooLargeError,
    StoreError,
    UploadRejectedError,
    UploadRequiredError,
)
from kiln_service.fairness import check_active_jobs
from kiln_service.logs import bind
from kiln_service.queue import enqueue_compile
from kiln_service.routes._compile_openapi import COMPILE_OPENAPI
from kiln_service.stores._workers import unserved_target_message
from kiln_service.stores.artifacts import ArtifactStore, job_prefix, upload_key
from kiln_service.stores.jobs import JobRecord
from kiln_service.tracing import span
from kiln_service.uploads import ReceivedForm, is_disk_full, receive_multipart
from kiln_service.webhooks import check_job_webhook, register_job_webhook
from kiln_service.webhooks.store import WebhookStore

__all__ = ["router"]

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["compile"])

FILE_FIELDS = {"model", "example_inputs"}
JSON_FIELDS = {"placement", "input_shapes", "labels", "webhook_events"}
PLACEMENT_MODES = frozenset(get_args(PlacementMode))
TEXT_FIELDS = set(CompileRequest.model_fields)
_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,62}$")

@router.post(
    "/compile", status_code=202, response_model=Job, openapi_extra=COMPILE_OPENAPI,
    responses={202: {"description": "Accepted; `Location` names the job."},
               409: {"description": "`upload_required`: `model_digest` missed the compile cache; "
                                    "send the model"}},
    summary="Submit a SavedModel for compilation",
)
async def create_compile_job(request: Request, response: Response, tenant: TenantDep) -> Job:
    """Stream the upload to staging, check it without TensorFlow, store it, create and queue the job."""
    services = get_services(request)
    settings = services.settings
    _check_content_length(request, settings)
    # Fairness before the body is read: a refused tenant costs no upload bandwidth or disk.
    await anyio.to_thread.run_sync(services.rate_limiter.check, tenant)
    await anyio.to_thread.run_sync(partial(
        check_active_jobs, services.job_store, tenant=tenant,
        limit=settings.max_active_jobs_per_tenant))
    key = idempotency.check_key(request.headers.get(idempotency.HEADER))
    async with services.in_flight.hold(tenant, key):
        try:
            job, replayed = await _receive_and_submit(request, services, tenant, key)
        except (OSError, StoreError) as exc:
            if not is_disk_full(exc):
                raise
            logger.warning("upload refused: the disk is full (%s)", exc)
            raise InsufficientStorageError(
                "the server has no room to store this upload right now (its disk is full); "
                "nothing of it was kept: retry later, or send a smaller model",
            ) from exc
    if replayed:
        response.headers[idempotency.REPLAYED_HEADER] = "true"
    else:
        services.metrics.submitted.labels(target=job.target).inc()
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job.to_public()


async def _receive_and_submit(
    request: Request, services: Services, tenant: str, key: str | None
) -> tuple[JobRecord, bool]:
    """Receive the form, then replay the job of an earlier request with ``key`` or submit anew."""
    settings = services.settings
    job_id = uuid.uuid4().hex
    bind(job_id=job_id)
    with span("kiln.receive_upload", {"kiln.job_id": job_id}):
        form = await receive_multipart(
            request.stream(), request.headers.get("content-type", ""),
            staging=services.staging_dir, prefix=job_id, file_fields=FILE_FIELDS,
            text_fields=TEXT_FIELDS, max_file_bytes=settings.max_upload_bytes,
            max_body_bytes=settings.resolved_max_request_bytes,
            max_field_bytes=settings.max_form_field_bytes,
            idle_timeout_seconds=settings.upload_idle_timeout_seconds,
        )
    try:
        compile_request = parse_compile_request(form.fields, settings)
        # A model named by s3:// or models:/ joins the form here, then takes the upload's path.
        await anyio.to_thread.run_sync(sources.fetch_model, form, compile_request, settings,
                                       services.staging_dir, job_id)
        digest = idempotency.request_digest(form) if key else None
        if key and digest:
            earlier = await anyio.to_thread.run_sync(_replay, services, tenant, key, digest)
            if earlier is not None:
                return earlier, True
        try:
            job = await anyio.to_thread.run_sync(
                _check_store_and_queue, services, form, compile_request, job_id, tenant,
                key, digest)
        except DuplicateIdempotencyKeyError:
            # Another API process created the job with this key between our look-up and insert.
            if key is None or digest is None:
                raise
            earlier = await anyio.to_thread.run_sync(_replay, services, tenant, key, digest)
            if earlier is None:
                raise
            return earlier, True
        return job, False
    finally:
        form.cleanup()


def _replay(services: Services, tenant: str, key: str, digest: str) -> JobRecord | None:
    return idempotency.replay(services.job_store, tenant=tenant, key=key, digest=digest)


def _check_content_length(request: Request, settings: Settings) -> None:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > settings.resolved_max_request_bytes:
        raise PayloadTooLargeError(
            f"the request body ({declared} bytes) is larger than the limit of "
            f"{settings.resolved_max_request_bytes} bytes", code="request_too_large")


def parse_compile_request(fields: dict[str, str], settings: Settings) -> CompileRequest:
    """Validate the form fields into a :class:`CompileRequest` and check target, flags, timeout.

    Args:
        fields: The text parts of the form.
        settings: The settings (timeouts).

    Returns:
        The request.

    Raises:
        UploadRejectedError: A field is malformed or not allowed.
    """
    data: dict[str, Any] = {}
    for key, raw in fields.items():
        if key == "placement" and raw.strip() in PLACEMENT_MODES:  # the bare mode name
            data[key] = raw.strip()
        elif key in JSON_FIELDS:
            try:
                data[key] = json.loads(raw) if raw.strip() else None
            except json.JSONDecodeError as exc:
                raise UploadRejectedError(f"form field {key!r} is not valid JSON: {exc}",
                                          code="invalid_field") from exc
        elif raw != "" or key in ("flags", "name"):
            data[key] = raw
    if data.get("labels") is None:
        data.pop("labels", None)
    try:
        req = CompileRequest.model_validate(data)
    except ValidationError as exc:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        raise UploadRejectedError(detail, code="invalid_field", errors=errors) from exc
    _check_fields(req, settings)
    return req


def _check_fields(req: CompileRequest, settings: Settings) -> None:
    if req.target not in TARGETS:
        raise UploadRejectedError(f"unknown target {req.target!r}; targets: {', '.join(TARGETS)}",
                                  code="unknown_target")
    try:
        parse_flags(req.flags)
    except FlagsError as exc:
        raise UploadRejectedError(str(exc), code="invalid_flags") from exc
    timeout = req.timeout_seconds
    if timeout is not None and not 1 <= timeout <= settings.max_timeout_seconds:
        raise UploadRejectedError(f"timeout_seconds must be between 1 and "
                                  f"{settings.max_timeout_seconds}", code="invalid_timeout")
    for key, value in req.labels.items():
        if not _LABEL_KEY.match(key) or len(value) > 256:
            raise UploadRejectedError(f"label {key!r}: keys are 1-63 letters, digits, '_.-/' "
                                      "(starting with a letter or digit), values at most 256 "
                                      "characters", code="invalid_labels")
    if req.name is not None and len(req.name) > 256:
        raise UploadRejectedError("name is longer than 256 characters", code="invalid_field")
    check_job_webhook(req, settings)


def _check_store_and_queue(
    services: Services, form: ReceivedForm, req: CompileRequest, job_id: str, tenant: str,
    idempotency_key: str | None = None, request_sha256: str | None = None,
) -> JobRecord:
    """Check the upload, move it into the artifact store, create and queue the job.

    On any failure nothing of the job stays stored.
    """
    if req.model_digest is not None:
        return _answer_from_digest(services, form, req, req.model_digest, job_id, tenant,
                                   idempotency_key, request_sha256)
    settings, artifacts = services.settings, services.artifact_store
    with span("kiln.ingest", {"kiln.job_id": job_id}):
        info = _check_upload(form, req, settings, services.staging_dir / f"{job_id}-scratch")
    stage_message = _check_served(services, req.target)
    # Registered first: a job answered from the cache ends at once, and its event needs it.
    register_job_webhook(WebhookStore(services.job_store.engine), job_id=job_id,
                         tenant=tenant, req=req)
    with span("kiln.cache_lookup", {"kiln.job_id": job_id}):
        cached = cache.lookup(services, form, req, info.digest, job_id=job_id, tenant=tenant,
                              idempotency_key=idempotency_key, request_sha256=request_sha256)
    if cached.job is not None:
        return cached.job
    stored = False
    try:
        with span("kiln.store_upload", {"kiln.job_id": job_id}):
            digests = _store_uploads(artifacts, form, job_id)
        job = services.job_store.create_job(
            job_id=job_id, tenant=tenant, target=req.target, name=req.name, labels=req.labels,
            flags=req.flags, signature=req.signature, placement=req.placement,
            input_shapes=req.input_shapes, input_digests=digests,
            timeout_seconds=req.timeout_seconds or settings.default_timeout_seconds,
            stage_message=stage_message, idempotency_key=idempotency_key,
            request_sha256=request_sha256, pipeline=sources.pipeline_of(req),
            cache_key=cached.key,
        )
        stored = True
        enqueue_compile(services.celery, job_id=job_id, target=req.target)
        return job
    except BaseException:
        if stored:
            services.job_store.delete_job(job_id=job_id, only_finished=False)
        artifacts.delete_prefix(job_prefix(job_id))
        raise


def _answer_from_digest(
    services: Services, form: ReceivedForm, req: CompileRequest, digest: str, job_id: str,
    tenant: str, idempotency_key: str | None, request_sha256: str | None,
) -> JobRecord:
    """Answer a request that sent ``model_digest`` instead of the model from the tenant's cache.

    Raises:
        UploadRejectedError: The cache is off for the request, or the inputs are unusable.
        UploadRequiredError: A miss: nothing was stored, the client sends the model.
    """
    _check_inputs_given(form, req)
    if not req.cache:
        raise UploadRejectedError("model_digest asks the compile cache, which cache=false turns "
                                  "off; send the model itself", code="invalid_field")
    inputs = form.files.get("example_inputs")
    if inputs is not None:  # only hashed here: checked against the model when it was compiled
        read_npz_headers(inputs.path, services.settings.max_upload_bytes)
    _check_served(services, req.target)
    webhooks = WebhookStore(services.job_store.engine)
    endpoint = register_job_webhook(webhooks, job_id=job_id, tenant=tenant, req=req)
    with span("kiln.cache_lookup", {"kiln.job_id": job_id}):
        cached = cache.lookup(services, form, req, digest, job_id=job_id,
                              tenant=tenant, idempotency_key=idempotency_key,
                              request_sha256=request_sha256)
    if cached.job is not None:
        return cached.job
    if endpoint is not None:
        webhooks.delete_endpoint(tenant=tenant, endpoint_id=endpoint)
    raise UploadRequiredError(
        "the compile cache holds no outcome for this model_digest with these inputs, flags, "
        "target, signature and placement (or the request always compiles: output_location, "
        "mlflow_register); nothing was stored: send the same request with the model file part "
        "instead of model_digest")


def _store_uploads(artifacts: ArtifactStore, form: ReceivedForm, job_id: str) -> dict[str, str]:
    """Copy the checked files into the artifact store; return their sha256 by form field."""
    digests = {}
    for field, name in (("model", "model"), ("example_inputs", "example_inputs.npz")):
        if field in form.files:
            _size, sha256 = artifacts.put_file(upload_key(job_id, name), form.files[field].path)
            if sha256 != form.files[field].sha256:
                raise StoreError(f"{field} changed while being stored (sha256 mismatch)")
            digests[field] = sha256
    return digests


def _check_served(services: Services, target: str) -> str | None:
    """Return the waiting message when no live worker serves ``target`` (``None`` if one does).

    Raises:
        NoWorkerForTargetError: None serves it and ``KILN_REJECT_UNSERVED_TARGETS`` is set.
    """
    settings = services.settings
    live = services.job_store.live_targets(live_within_seconds=settings.worker_liveness_seconds)
    if target in live:
        return None
    if settings.reject_unserved_targets:
        raise NoWorkerForTargetError(
            f"no live worker serves target {target!r}, and this service refuses such jobs; "
            f"start one with `kiln-worker --targets {target}` (GET /v1/workers lists the live "
            "ones), then submit again")
    logger.info("job for target %s queued with no live worker serving it", target)
    return unserved_target_message(target)


def _check_upload(form: ReceivedForm, req: CompileRequest, settings: Settings,
                  scratch: Path) -> ingest.ArchiveInfo:
    model = form.files.get("model")
    if model is None or model.size == 0:
        raise UploadRejectedError("the 'model' file part is missing or empty; send the SavedModel "
                                  "folder as a .tar.gz, .tar or .zip archive", code="missing_model")
    _check_inputs_given(form, req)
    inputs = form.files.get("example_inputs")
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        info = ingest.inspect_archive(model.path, max_members=settings.max_archive_members,
                                      max_total_bytes=settings.max_archive_total_bytes,
                                      scratch=scratch)
        signature = ingest.select_signature(ingest.read_signatures(info), req.signature)
        if inputs is not None:
            ingest.check_example_inputs(inputs.path, signature,
                                        max_array_bytes=settings.max_upload_bytes)
        else:
            ingest.check_input_shapes(signature, req.input_shapes)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return info


def _check_inputs_given(form: ReceivedForm, req: CompileRequest) -> None:
    if "example_inputs" in form.files and req.input_shapes is not None:
        raise UploadRejectedError("send either example_inputs or input_shapes, not both",
                                  code="conflicting_inputs")
