"""``GET /v1/jobs/{id}/events``: the job's typed live events as server-sent events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Header, Request
from fastapi.responses import StreamingResponse

from kiln_service._hub import follow_job
from kiln_service.deps import JobStoreDep, TenantDep
from kiln_service.events import EventBus

__all__ = ["router"]

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get(
    "/{job_id}/events", summary="Follow a job's status, stage and log events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def stream_job_events(
    request: Request,
    job_id: str,
    store: JobStoreDep,
    tenant: TenantDep,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """Stream the job's events until it ends.

    Events: ``status`` (``{"type": "job.running", "status", "job"}``), ``stage``
    (``{"stage", "progress", "message"}``), ``log`` (``{"seq", "line"}``) and a final ``end``
    whose data is the final status. Each has an ``id``; send it back as ``Last-Event-ID`` to
    resume after it. Without one, the stream opens with the job's current ``status``.
    """
    await anyio.to_thread.run_sync(partial(store.get_job, job_id=job_id, tenant=tenant))
    bus: EventBus = request.app.state.event_bus

    async def body() -> AsyncIterator[str]:
        async with bus.follow(job_id) as (hub, queue):
            async for chunk in follow_job(hub, queue, store, job_id, last_event_id):
                yield chunk

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
