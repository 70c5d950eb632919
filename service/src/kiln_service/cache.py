"""The content-addressed compile cache: a resubmitted compile ends at once with the first outcome.

* At submission (:func:`lookup`, in the API, not through the queue) the upload's request key is
  computed (``kiln_service._cache_key``) and joined with each toolchain live workers advertise
  for the target; the first entry found in the tenant's cache answers the job: it is created
  already ``succeeded`` (or ``failed`` with the original deterministic reason), listing the
  source job's artifacts, which stay stored once under the source's keys.
* When a worker finishes a job that used the cache (:func:`record_outcome`), a success or a
  deterministic client failure (``kiln_client.codes.CACHED_FAILURE_CODES``) becomes an entry
  under the worker's own toolchain; then the tenant's least recently used entries past
  ``KILN_CACHE_MAX_BYTES`` are evicted. Limits, time-outs and crashes are never cached: they
  depend on the operator's limits and the machine, and a resubmission may well succeed.
* Files are deleted only once nothing refers to them (:func:`delete_job`, :func:`purge`,
  eviction): deleting a source job keeps what jobs answered from it serve, and the reverse.

Entries live in the job store (table ``compile_cache``), shared by every API replica and
worker; scope is per tenant, so no tenant learns another's models or timings.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kiln_client.models import CompileRequest
from kiln_service._cache_key import entry_key, inputs_digest, request_key
from kiln_service.errors import StoreError
from kiln_service.stores.artifacts import (
    ArtifactStore,
    delete_attempts,
    job_prefix,
    list_attempts,
)
from kiln_service.stores.jobs import JobRecord, JobStore, new_job_row

if TYPE_CHECKING:  # the worker imports this module: no FastAPI at run time
    from kiln_service.deps import Services
    from kiln_service.uploads import ReceivedForm

__all__ = ["Lookup", "delete_job", "lookup", "purge", "record_outcome"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lookup:
    """What :func:`lookup` found."""

    key: str | None
    """The request key to store on a new job; ``None`` when the job does not use the cache."""
    job: JobRecord | None = None
    """The job answered from the cache (already finished), on a hit."""


def lookup(services: Services, form: ReceivedForm, req: CompileRequest, model: str, *,
           job_id: str, tenant: str, idempotency_key: str | None = None,
           request_sha256: str | None = None) -> Lookup:
    """Answer a checked submission from the tenant's cache, or return the key to compile under.

    Args:
        services: The API's services.
        form: The received form (files checked).
        req: Its fields.
        model: The SavedModel's content digest: the upload's (``ingest.ArchiveInfo.digest``) or
            the one the client sent instead of the model (``model_digest``).
        job_id: The new job's id.
        tenant: The submitting tenant.
        idempotency_key: The request's ``Idempotency-Key``, kept on a cached job too.
        request_sha256: The request's digest for idempotent replays.

    Returns:
        The key, and the finished job on a hit.

    Raises:
        DuplicateIdempotencyKeyError: Another job holds ``idempotency_key``.
        StoreError: The job store failed.
    """
    from kiln_service.sources import pipeline_of  # API only (the worker imports this module)

    settings = services.settings
    if not req.cache or settings.cache_max_bytes == 0:
        return Lookup(None)
    inputs = form.files.get("example_inputs")
    key = request_key(req, model=model,
                      inputs=inputs_digest(inputs.path) if inputs is not None else None)
    store = services.job_store
    keys = [entry_key(key, t) for t in store.live_toolchains(
        target=req.target, live_within_seconds=settings.worker_liveness_seconds)]
    values = new_job_row(
        job_id=job_id, tenant=tenant, target=req.target, name=req.name, labels=req.labels,
        flags=req.flags, signature=req.signature, placement=req.placement,
        input_shapes=req.input_shapes, input_digests={f: form.files[f].sha256 for f in form.files},
        timeout_seconds=req.timeout_seconds or settings.default_timeout_seconds,
        idempotency_key=idempotency_key, request_sha256=request_sha256, cache_key=key,
        pipeline=pipeline_of(req))
    if req.output_location or req.mlflow_register:
        keys = []  # the worker does the exports: compile (the outcome is cached for others)
    job = store.create_cached_job(tenant=tenant, keys=keys, values=values) if keys else None
    services.metrics.cache_lookups.labels(target=req.target,
                                          result="miss" if job is None else "hit").inc()
    if job is None:
        return Lookup(key)
    logger.info("job %s answered from the compile cache (job %s)", job_id, job.cache_source)
    store.append_logs(job_id=job_id, lines=f"[kiln] answered from the compile cache: the same "
                      f"model, inputs, flags and toolchain were compiled by job {job.cache_source};"
                      f" its artifacts are this job's (submit with cache=false to compile again)")
    return Lookup(key, job)


def record_outcome(store: JobStore, artifacts: ArtifactStore, *, job: JobRecord,
                   toolchain: Mapping[str, str], max_bytes: int) -> bool:
    """Cache a finished job's outcome if it may be reused, then evict past ``max_bytes``.

    Called by the worker after it finished ``job``. Failures are logged, not raised: a job's
    outcome matters more than its cache entry.

    Args:
        store: The job store.
        artifacts: The artifact store (evicted sources' files are deleted).
        job: The finished job.
        toolchain: What the worker advertises for the job's target.
        max_bytes: ``KILN_CACHE_MAX_BYTES`` (0: the cache is off).

    Returns:
        Whether an entry was added.
    """
    if max_bytes <= 0 or job.cache_key is None:
        return False
    try:
        if not store.remember_outcome(job_id=job.id, toolchain=toolchain):
            return False
        _release(artifacts, store.evict_cache(tenant=job.tenant, max_bytes=max_bytes))
    except StoreError as exc:
        logger.warning("job %s: could not add the outcome to the compile cache: %s", job.id,
                       exc.detail)
        return False
    return True


def purge(store: JobStore, artifacts: ArtifactStore, *, tenant: str) -> int:
    """Empty a tenant's cache; jobs answered from it keep their artifacts.

    Returns:
        How many entries were removed.

    Raises:
        StoreError: The job store or the artifact store failed.
    """
    count, released = store.purge_cache(tenant=tenant)
    _release(artifacts, released)
    logger.info("compile cache of tenant %s purged: %d entries", tenant, count)
    return count


def delete_job(store: JobStore, artifacts: ArtifactStore, *, job_id: str,
               tenant: str | None) -> JobRecord:
    """Delete a finished job and the files nothing else refers to.

    Its published attempt stays while its cache entry or jobs answered from it use it; a job
    answered from the cache frees its source's files once nothing else uses them.

    Returns:
        The job as it was.

    Raises:
        JobNotFoundError: No such job for the tenant.
        JobStateError: It is still queued or running.
        StoreError: A store failed.
    """
    removal = store.remove_job(job_id=job_id, tenant=tenant)
    if removal.keep_attempt is None:
        artifacts.delete_prefix(job_prefix(job_id))
    else:
        artifacts.delete_prefix(job_prefix(job_id) + "upload/")
        delete_attempts(artifacts, job_id, list_attempts(artifacts, job_id) - {removal.keep_attempt})
    _release(artifacts, removal.released)
    return removal.job


def _release(artifacts: ArtifactStore, sources: Iterable[str]) -> None:
    for source in sources:
        artifacts.delete_prefix(job_prefix(source))
        logger.info("compile cache: files of job %s deleted (nothing refers to them)", source)
