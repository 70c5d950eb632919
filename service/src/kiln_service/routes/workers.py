"""``GET /v1/workers``: the live workers and their targets; the waiting message of queued jobs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Query

from kiln_client.models import Job, JobStatus
from kiln_service.config import TARGETS, Settings
from kiln_service.deps import JobStoreDep, SettingsDep
from kiln_service.errors import UploadRejectedError
from kiln_service.stores._workers import WorkerList, unserved_target_message
from kiln_service.stores.jobs import JobStore

__all__ = ["router", "with_waiting_messages"]

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/workers", tags=["workers"])


@router.get("", response_model=WorkerList, summary="List the live workers and their targets")
def list_workers(
    store: JobStoreDep,
    settings: SettingsDep,
    target: Annotated[str | None, Query(description="Only workers serving this target")] = None,
) -> WorkerList:
    """Return the workers seen within ``KILN_WORKER_LIVENESS_SECONDS``, newest first."""
    if target is not None and target not in TARGETS:
        raise UploadRejectedError(f"unknown target {target!r}; targets: {', '.join(TARGETS)}",
                                  code="unknown_target")
    window = settings.worker_liveness_seconds
    return WorkerList(items=store.list_workers(live_within_seconds=window, target=target),
                      liveness_seconds=window)


def with_waiting_messages(store: JobStore, settings: Settings, jobs: Sequence[Job]) -> list[Job]:
    """Show, on queued jobs, whether a live worker serves their target now.

    A queued job whose target no live worker serves gets the waiting message; one that was
    stored with that message but is now served loses it (a worker will claim it).

    Args:
        store: The job store (the workers table).
        settings: The settings (liveness window).
        jobs: Jobs as read from the store.

    Returns:
        The jobs, queued ones with their stage message brought up to date.
    """
    if not any(job.status is JobStatus.QUEUED for job in jobs):
        return list(jobs)
    live = store.live_targets(live_within_seconds=settings.worker_liveness_seconds)
    shown = []
    for job in jobs:
        if job.status is JobStatus.QUEUED:
            waiting = unserved_target_message(job.target)
            if job.target not in live:
                job = job.model_copy(update={"stage_message": waiting})
            elif job.stage_message == waiting:
                job = job.model_copy(update={"stage_message": None})
        shown.append(job)
    return shown
