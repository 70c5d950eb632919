"""One job's live stream in one API process: a hub reads each change once for all its followers.

A :class:`JobHub` wakes when the :class:`~kiln_service.events.EventBus` says its job changed (or
on its fallback timer), reads the new event rows and log lines in one go, and puts them on every
follower's queue. A follower first catches up from its ``Last-Event-ID`` with one read of its own,
then only takes from its queue (:func:`follow_job`).

Stream ids are ``"<event id>-<log seq>"``: everything up to both has been sent; resuming with such
an id sends events and log lines after them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio.to_thread
from sqlalchemy import func, select

from kiln_service.stores._event_schema import job_events
from kiln_service.stores._schema import jobs
from kiln_service.stores.jobs import JobStore

__all__ = ["Cursor", "JobHub", "StreamItem", "follow_items", "follow_job", "follow_log", "parse_cursor",
           "read_items", "sse"]

_TERMINAL = ("job.succeeded", "job.failed", "job.cancelled")
_BATCH = 1000
KEEPALIVE_SECONDS = 15.0


@dataclass(frozen=True)
class Cursor:
    """How far a stream has got: the last event id and the last log line number."""

    event: int = 0
    log: int = 0

    def __str__(self) -> str:
        return f"{self.event}-{self.log}"


@dataclass(frozen=True)
class StreamItem:
    """One server-sent event: ``kind`` is ``status``, ``stage``, ``log`` or ``end``."""

    kind: str
    cursor: Cursor
    data: dict[str, Any]
    event_id: int = 0
    log_seq: int = 0

    def is_after(self, cursor: Cursor) -> bool:
        """Whether this item is newer than what ``cursor`` has seen."""
        return self.event_id > cursor.event if self.kind != "log" else self.log_seq > cursor.log


def parse_cursor(value: str | None) -> Cursor | None:
    """Read a ``Last-Event-ID`` (``E-L``, or a bare log number from the older log stream)."""
    if not value:
        return None
    event, sep, log = value.strip().partition("-")
    if not sep:
        event, log = "0", event
    if not (event.isdigit() and log.isdigit()):
        return None
    return Cursor(int(event), int(log))


def read_items(store: JobStore, job_id: str, cursor: Cursor) -> tuple[list[StreamItem], Cursor, bool]:
    """Read what happened after ``cursor``: events, then log lines, then a terminal status.

    Events are read before log lines, so every line written before the job ended is read too.

    Returns:
        ``(items, new cursor, whether the job has ended)``.
    """
    with store.engine.connect() as conn:
        rows = conn.execute(select(job_events.c.id, job_events.c.type, job_events.c.job)
                            .where(job_events.c.job_id == job_id, job_events.c.id > cursor.event)
                            .order_by(job_events.c.id)).all()
    lines = store.read_logs(job_id=job_id, after_seq=cursor.log, limit=_BATCH)
    while lines and len(lines) % _BATCH == 0:  # a long log: read on to its end
        more = store.read_logs(job_id=job_id, after_seq=lines[-1].seq, limit=_BATCH)
        if not more:
            break
        lines += more
    items: list[StreamItem] = []
    event, log = cursor.event, cursor.log
    final = [r for r in rows if r.type in _TERMINAL]
    for row in (r for r in rows if r.type not in _TERMINAL):
        event = row.id
        items.append(_event_item(row.id, row.type, row.job, Cursor(event, log)))
    for line in lines:
        log = line.seq
        items.append(StreamItem("log", Cursor(event, log), {"seq": line.seq, "line": line.line},
                                log_seq=line.seq))
    for row in final:
        event = max(event, row.id)
        items.append(_event_item(row.id, row.type, row.job, Cursor(event, log)))
    ended = bool(final)
    return items, Cursor(event, log), ended


def _event_item(event_id: int, kind: str, job: dict[str, Any], cursor: Cursor) -> StreamItem:
    if kind in ("job.stage", "job.progress"):
        data = {"type": kind, "stage": job.get("stage"), "progress": job.get("progress"),
                "message": job.get("stage_message")}
        return StreamItem("stage", cursor, data, event_id=event_id)
    return StreamItem("status", cursor, {"type": kind, "status": job.get("status"), "job": job},
                      event_id=event_id)


def sse(item: StreamItem) -> str:
    """The item as a server-sent event."""
    if item.kind == "end":
        return f"event: end\ndata: {item.data.get('status', '')}\n\n"
    return f"id: {item.cursor}\nevent: {item.kind}\ndata: {json.dumps(item.data)}\n\n"


class JobHub:
    """Reads one job's changes once per wake-up and fans them out to its followers' queues."""

    def __init__(self, store: JobStore, job_id: str, fallback_seconds: float) -> None:
        self.store = store
        self.job_id = job_id
        self.fallback_seconds = fallback_seconds
        self.ready = asyncio.Event()
        self.queues: set[asyncio.Queue[StreamItem]] = set()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"kiln-hub-{job_id}")

    def wake(self) -> None:
        """Read the job again soon (called on the event loop)."""
        self._wake.set()

    def subscribe(self) -> asyncio.Queue[StreamItem]:
        """A new follower's queue."""
        queue: asyncio.Queue[StreamItem] = asyncio.Queue()
        self.queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[StreamItem]) -> None:
        """Forget a follower."""
        self.queues.discard(queue)

    async def close(self) -> None:
        """Stop reading."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task

    async def _run(self) -> None:
        cursor = await anyio.to_thread.run_sync(partial(_start_cursor, self.store, self.job_id))
        self.ready.set()
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.fallback_seconds)
            self._wake.clear()
            items, cursor, ended = await anyio.to_thread.run_sync(
                partial(read_items, self.store, self.job_id, cursor))
            for item in items + ([_end(items)] if ended else []):
                for queue in list(self.queues):
                    queue.put_nowait(item)
            if ended:
                return


def _start_cursor(store: JobStore, job_id: str) -> Cursor:
    with store.engine.connect() as conn:
        last = conn.execute(select(func.max(job_events.c.id))
                            .where(job_events.c.job_id == job_id)).scalar_one_or_none()
        seq = conn.execute(select(jobs.c.log_seq).where(jobs.c.id == job_id)).scalar_one_or_none()
    return Cursor(int(last or 0), int(seq or 0))


def _end(items: list[StreamItem]) -> StreamItem:
    status = next((i.data.get("status") for i in reversed(items) if i.kind == "status"), "")
    return StreamItem("end", Cursor(), {"status": status})


async def follow_items(hub: JobHub, queue: asyncio.Queue[StreamItem], store: JobStore,
                       job_id: str, resume: Cursor | None) -> AsyncIterator[StreamItem | None]:
    """One follower's items: catch-up after ``resume``, then live items until ``end``.

    Without a cursor the stream opens with a ``status`` item holding the job as it is. ``None``
    asks for a keep-alive.
    """
    await hub.ready.wait()
    if resume is not None:
        cursor = resume
    else:
        job = await anyio.to_thread.run_sync(partial(store.get_job, job_id=job_id))
        start = await anyio.to_thread.run_sync(partial(_start_cursor, store, job_id))
        cursor = Cursor(start.event, 0)
        snapshot = job.to_public().model_dump(mode="json")
        yield StreamItem("status", cursor, {"type": f"job.{job.status.value}",
                                            "status": job.status.value, "job": snapshot})
    items, cursor, ended = await anyio.to_thread.run_sync(partial(read_items, store, job_id, cursor))
    for item in items:
        yield item
    if not ended:
        # A job that ended without a terminal event (finished before events were recorded).
        job = await anyio.to_thread.run_sync(partial(store.get_job, job_id=job_id))
        if job.status.is_terminal:
            more, cursor, _ = await anyio.to_thread.run_sync(
                partial(read_items, store, job_id, cursor))
            for item in more:
                yield item
            yield StreamItem("end", cursor, {"status": job.status.value})
            return
    if ended:
        yield _end(items)
        return
    while True:
        try:
            item = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
        except asyncio.TimeoutError:
            yield None
            continue
        if item.kind == "end":
            yield item
            return
        if item.is_after(cursor):
            cursor = item.cursor
            yield item


async def follow_job(hub: JobHub, queue: asyncio.Queue[StreamItem], store: JobStore,
                     job_id: str, last_event_id: str | None) -> AsyncIterator[str]:
    """The typed event stream (``/events``) of one follower, as server-sent events."""
    async for item in follow_items(hub, queue, store, job_id, parse_cursor(last_event_id)):
        yield ": keep-alive\n\n" if item is None else sse(item)


async def follow_log(hub: JobHub, queue: asyncio.Queue[StreamItem], store: JobStore,
                     job_id: str, after_seq: int) -> AsyncIterator[str]:
    """The log stream (``/logs?follow``) of one follower: each line an event whose id is its
    number, then ``end`` with the final status."""
    async for item in follow_items(hub, queue, store, job_id, Cursor(0, after_seq)):
        if item is None:
            yield ": keep-alive\n\n"
        elif item.kind == "log":
            text = str(item.data["line"])
            data = "\n".join(f"data: {part}" for part in text.splitlines() or [""])
            yield f"id: {item.log_seq}\n{data}\n\n"
        elif item.kind == "end":
            yield sse(item)
