"""Job routes: list, read, cancel, delete, and the compile log (plain or server-sent events)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from functools import partial
from typing import Annotated

import anyio
import anyio.to_thread
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import PlainTextResponse, StreamingResponse

from kiln_client.models import Job, JobList, JobStatus
from kiln_service import cache
from kiln_service._hub import follow_log
from kiln_service.deps import ArtifactStoreDep, JobStoreDep, SettingsDep, TenantDep, ValidJobDep
from kiln_service.errors import JobStateError, UploadRejectedError
from kiln_service.events import EventBus
from kiln_service.routes.workers import with_waiting_messages
from kiln_service.stores.jobs import JobStore

__all__ = ["router"]

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get("", response_model=JobList, summary="List jobs, newest first")
def list_jobs(
    store: JobStoreDep,
    settings: SettingsDep,
    tenant: TenantDep,
    status: Annotated[list[JobStatus] | None, Query(description="Repeatable status filter")] = None,
    target: Annotated[str | None, Query()] = None,
    label: Annotated[list[str] | None, Query(description="Repeatable `key:value` filter")] = None,
    name: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
) -> JobList:
    """Return one page of the caller's jobs, newest first, filtered."""
    labels: dict[str, str] = {}
    for item in label or []:
        key, sep, value = item.partition(":")
        if not sep or not key:
            raise UploadRejectedError(f"label filter {item!r} must be key:value", code="invalid_query")
        labels[key] = value
    page = store.list_jobs(
        tenant=tenant, status=[s.value for s in status] if status else None, target=target,
        labels=labels, name=name, limit=limit, cursor=cursor,
    )
    return page.model_copy(update={"items": with_waiting_messages(store, settings, page.items)})


@router.get("/{job_id}", response_model=Job, summary="Read a job")
def read_job(job: ValidJobDep, store: JobStoreDep, settings: SettingsDep) -> Job:
    """Return the job (a queued one says when no live worker serves its target)."""
    return with_waiting_messages(store, settings, [job.to_public()])[0]


@router.post("/{job_id}/cancel", response_model=Job, summary="Cancel a job")
def cancel_job(job: ValidJobDep, store: JobStoreDep, tenant: TenantDep) -> Job:
    """Cancel a queued job at once, or ask the worker of a running one to stop it.

    A finished job answers 409.
    """
    return store.request_cancel(job_id=job.id, tenant=tenant).to_public()


@router.delete("/{job_id}", status_code=204, summary="Delete a finished job and its files")
def delete_job(
    job: ValidJobDep, store: JobStoreDep, artifacts: ArtifactStoreDep, tenant: TenantDep
) -> Response:
    """Delete a finished job, its uploads, artifacts and log; 409 while it is queued or running."""
    if not job.status.is_terminal:
        raise JobStateError(f"job {job.id} is {job.status.value}; cancel it and wait for it to "
                            "finish before deleting it", code="job_not_finished")
    # Files the compile cache or other jobs still use stay (see kiln_service.cache).
    cache.delete_job(store, artifacts, job_id=job.id, tenant=tenant)
    return Response(status_code=204)


@router.get(
    "/{job_id}/logs", summary="Read or follow the compile log",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {}, "text/event-stream": {}}}},
)
async def read_job_logs(
    request: Request,
    job_id: str,
    store: JobStoreDep,
    tenant: TenantDep,
    follow: Annotated[bool, Query(description="Stream as server-sent events until the job ends")] = False,
    accept: Annotated[str | None, Header()] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> Response:
    """Return the log so far as text, or follow it live as server-sent events.

    With ``Accept: text/event-stream`` or ``?follow=true`` each line is an event whose ``id`` is
    its sequence number; ``Last-Event-ID`` resumes after that line. A final ``end`` event carries
    the job's status.
    """
    await anyio.to_thread.run_sync(partial(store.get_job, job_id=job_id, tenant=tenant))
    if follow or "text/event-stream" in (accept or ""):
        after = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0
        return StreamingResponse(
            _follow(request, store, job_id, after),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    lines = await anyio.to_thread.run_sync(partial(store.read_logs, job_id=job_id))
    text = "".join(f"{line.line}\n" for line in lines)
    return PlainTextResponse(text, headers={"X-Log-Last-Seq": str(lines[-1].seq if lines else 0)})


async def _follow(request: Request, store: JobStore, job_id: str, after: int) -> AsyncIterator[str]:
    # Woken with the job's other followers in this process (see kiln_service.events): no
    # follower polls the job store on its own.
    bus: EventBus = request.app.state.event_bus
    async with bus.follow(job_id) as (hub, queue):
        async for chunk in follow_log(hub, queue, store, job_id, after):
            yield chunk
