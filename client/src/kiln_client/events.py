"""Typed live events of a job, as ``job.events()`` yields them.

The service streams ``GET /v1/jobs/{id}/events`` as server-sent events; each becomes one of:

* :class:`StatusEvent`: the job reached a status (``job.running``, ``job.succeeded`` …), with the job;
* :class:`StageEvent`: the stage or progress moved (``stage``, ``progress``, ``message``);
* :class:`LogEvent`: one compile log line (``seq``, ``line``);
* :class:`EndEvent`: the job has ended; the stream stops after it.

A dropped connection resumes after the last event seen (``Last-Event-ID``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import BaseModel

from kiln_client import models
from kiln_client._artifacts import SSEParser
from kiln_client.errors import APIConnectionError

if TYPE_CHECKING:
    from kiln_client._jobs import AsyncJob, Job

__all__ = ["EndEvent", "JobEvent", "LogEvent", "StageEvent", "StatusEvent", "parse_event"]


class StatusEvent(BaseModel):
    """The job reached ``status``; ``job`` is the job at that moment."""

    id: str | None = None
    type: str
    status: models.JobStatus
    job: models.Job


class StageEvent(BaseModel):
    """The job's stage or progress changed."""

    id: str | None = None
    type: str = "job.stage"
    stage: models.Stage
    progress: float
    message: str | None = None


class LogEvent(BaseModel):
    """One line of the compile log."""

    id: str | None = None
    seq: int
    line: str


class EndEvent(BaseModel):
    """The job ended with ``status``; no event follows."""

    status: models.JobStatus | None = None


JobEvent = StatusEvent | StageEvent | LogEvent | EndEvent


def parse_event(event: str, event_id: str | None, data: str) -> JobEvent | None:
    """One server-sent event as a typed object (``None`` for kinds this SDK does not know)."""
    if event == "end":
        return EndEvent(status=models.JobStatus(data.strip()) if data.strip() else None)
    kinds: dict[str, type[BaseModel]] = {"status": StatusEvent, "stage": StageEvent, "log": LogEvent}
    kind = kinds.get(event)
    if kind is None:
        return None
    payload: dict[str, Any] = json.loads(data)
    parsed: JobEvent = kind.model_validate({**payload, "id": event_id})  # type: ignore[assignment]
    return parsed


def _events_in(parser: SSEParser, raw: str, job: Job | AsyncJob) -> Iterator[JobEvent]:
    """The typed events one stream line completes; a status event also refreshes ``job``."""
    for kind, event_id, data in parser.feed(raw.rstrip("\r")):
        item = parse_event(kind, event_id, data)
        if isinstance(item, StatusEvent):
            job._absorb(item.job)
        if item is not None:
            yield item


def iter_events(job: Job) -> Iterator[JobEvent]:
    """Follow ``job``'s events until it ends (reconnecting after a dropped stream)."""
    parser = SSEParser()
    while True:
        headers = {"Accept": "text/event-stream"}
        if parser.last_id is not None:
            headers["Last-Event-ID"] = parser.last_id
        try:
            with job._client._stream("GET", f"/v1/jobs/{job.id}/events", headers=headers) as resp:
                for raw in resp.iter_lines():
                    for item in _events_in(parser, raw, job):
                        yield item
                        if isinstance(item, EndEvent):
                            return
        except (APIConnectionError, httpx.TransportError):
            pass  # reconnect, resuming after the last event seen
        if job.refresh().done and parser.last_id is None:
            return


async def aiter_events(job: AsyncJob) -> AsyncIterator[JobEvent]:
    """Follow ``job``'s events until it ends; the async twin of :func:`iter_events`."""
    parser = SSEParser()
    while True:
        headers = {"Accept": "text/event-stream"}
        if parser.last_id is not None:
            headers["Last-Event-ID"] = parser.last_id
        try:
            async with job._client._stream("GET", f"/v1/jobs/{job.id}/events",
                                           headers=headers) as resp:
                async for raw in resp.aiter_lines():
                    for item in _events_in(parser, raw, job):
                        yield item
                        if isinstance(item, EndEvent):
                            return
        except (APIConnectionError, httpx.TransportError):
            pass
        if (await job.refresh()).done and parser.last_id is None:
            return
