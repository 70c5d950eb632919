"""The ``pipeline`` record of a job: where its model came from, where its outputs also go."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from kiln_client.models import Export
from kiln_service.stores._schema import jobs

__all__ = ["record_exports"]


def record_exports(engine: Engine, *, job_id: str, exports: Sequence[Export]) -> None:
    """Record what became of a job's exports (``Job.exports``), before its success is published.

    Args:
        engine: The job store's engine.
        job_id: The job.
        exports: One entry per destination.
    """
    with engine.begin() as conn:
        current = conn.execute(select(jobs.c.pipeline).where(jobs.c.id == job_id)).scalar()
        pipeline = {**(current or {}), "exports": [e.model_dump(mode="json") for e in exports]}
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(pipeline=pipeline))
