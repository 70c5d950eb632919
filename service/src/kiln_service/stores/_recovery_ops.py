"""Recovery operations of the job store: retries and what the reconciler does.

Every change here is one conditional ``UPDATE`` (status, fence, timestamps in the ``WHERE``),
so several reconcilers (one per worker) and the attempts themselves can race freely: exactly one
of them wins each transition, and only the winner re-enqueues. A job moved back to ``queued``
keeps its ``fence``; the next claim increments it, so the lost attempt can no longer publish.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Connection, and_, or_, select, update

from kiln_client.codes import FailureCode
from kiln_client.models import Failure, JobStatus, Stage
from kiln_service.stores._events import EventType, record_event
from kiln_service.stores._schema import jobs, utcnow

__all__ = ["DEFAULT_MAX_ATTEMPTS", "AttemptsOfJob", "RecoveryOpsMixin", "Requeued"]

logger = logging.getLogger(__name__)

#: attempts a job gets in all (the first run plus two retries after system errors)
DEFAULT_MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class Requeued:
    """A job put back on the queue: send ``kiln.compile`` for it to ``kiln.<target>``."""

    job_id: str
    target: str


@dataclass(frozen=True)
class AttemptsOfJob:
    """A job that may hold outputs of attempts that lost (a snapshot of its row)."""

    job_id: str
    status: str
    fence: int
    published_attempt: int | None

    def is_garbage(self, attempt: int) -> bool:
        """Whether ``attempt``'s outputs can never be published and may be deleted.

        Safe against races with the snapshot: an attempt claimed after it has a larger number
        and is kept; a finish can only publish the current fence, which is kept while running.
        """
        if attempt > self.fence or attempt == self.published_attempt:
            return False
        return not (attempt == self.fence and self.status == JobStatus.RUNNING.value)


class RecoveryOpsMixin:
    """Methods of :class:`~kiln_service.stores.jobs.JobStore` for retries and reconciling."""

    def _tx(self) -> AbstractContextManager[Connection]:  # provided by JobStore
        raise NotImplementedError

    def retry_job(
        self, *, job_id: str, fence: int, failure: Failure, max_attempts: int = DEFAULT_MAX_ATTEMPTS
    ) -> str | None:
        """After a system error, put the attempt's job back to ``queued``, or fail it for good.

        Args:
            job_id: The job id.
            fence: The failed attempt's fence (a stale attempt changes nothing).
            failure: The system error of the attempt.
            max_attempts: Attempts allowed in all; at that count the job fails with ``failure``.

        Returns:
            ``"queued"`` (re-enqueue it), ``"failed"``, or ``None`` if the attempt was stale.

        Raises:
            StoreError: The database failed.
        """
        now = utcnow()
        base = (jobs.c.id == job_id, jobs.c.status == JobStatus.RUNNING.value,
                jobs.c.fence == fence)
        with self._tx() as conn:
            queued = conn.execute(
                update(jobs).where(*base, jobs.c.attempts < max_attempts,
                                   jobs.c.cancel_requested.is_(False))
                .values(**_requeue_values(now, f"retrying after a system error ({failure.code})"))
            ).rowcount
            if queued:
                record_event(conn, job_id=job_id, type=EventType.QUEUED)
                logger.warning("job %s: attempt %s failed (%s); queued again", job_id, fence,
                               failure.code)
                return "queued"
            failed = conn.execute(
                update(jobs).where(*base).values(**_failed_values(now, failure))
            ).rowcount
            if failed:
                record_event(conn, job_id=job_id, type=EventType.FAILED)
        return "failed" if failed else None

    def requeue_stale_queued(self, *, older_than_seconds: float, limit: int = 100) -> list[Requeued]:
        """Claim the right to re-enqueue ``queued`` jobs that nothing touched for a while.

        A queued job whose message was lost (broker restarted without persistence, enqueue
        failed after the commit) would wait forever; re-sending it is harmless because
        :meth:`claim_job` is atomic. ``updated_at`` is bumped so only one reconciler re-sends.

        Args:
            older_than_seconds: Re-enqueue jobs not updated for this long.
            limit: At most this many per call.

        Returns:
            The jobs to re-enqueue.
        """
        now = utcnow()
        cutoff = now - timedelta(seconds=older_than_seconds)
        out: list[Requeued] = []
        with self._tx() as conn:
            rows = conn.execute(
                select(jobs.c.id, jobs.c.target, jobs.c.updated_at)
                .where(jobs.c.status == JobStatus.QUEUED.value, jobs.c.updated_at < cutoff)
                .order_by(jobs.c.updated_at).limit(limit)
            ).all()
            for job_id, target, updated_at in rows:
                won = conn.execute(
                    update(jobs).where(jobs.c.id == job_id, jobs.c.status == JobStatus.QUEUED.value,
                                       jobs.c.updated_at == updated_at)
                    .values(updated_at=now)
                ).rowcount
                if won:
                    out.append(Requeued(job_id, target))
        return out

    def recover_expired_leases(
        self, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS, limit: int = 100
    ) -> tuple[list[Requeued], list[str]]:
        """Take back ``running`` jobs whose lease lapsed (their worker died or hung).

        Each goes back to ``queued`` (the lost attempt counted in ``attempts``), or fails with
        ``system_error`` ``WorkerLost`` once it had ``max_attempts``; a job whose owner asked to
        cancel it is cancelled instead.

        Args:
            max_attempts: Attempts allowed in all.
            limit: At most this many per call.

        Returns:
            ``(to re-enqueue, ids failed or cancelled)``.
        """
        now = utcnow()
        requeued: list[Requeued] = []
        ended: list[str] = []
        with self._tx() as conn:
            rows = conn.execute(
                select(jobs.c.id, jobs.c.target, jobs.c.fence, jobs.c.attempts,
                       jobs.c.cancel_requested, jobs.c.worker_id)
                .where(jobs.c.status == JobStatus.RUNNING.value, jobs.c.lease_expires_at < now)
                .limit(limit)
            ).all()
            for job_id, target, fence, attempts, cancel, worker in rows:
                where = (jobs.c.id == job_id, jobs.c.status == JobStatus.RUNNING.value,
                         jobs.c.fence == fence, jobs.c.lease_expires_at < now)
                values = _lost_values(now, attempts, max_attempts, bool(cancel), str(worker))
                if not conn.execute(update(jobs).where(*where).values(**values)).rowcount:
                    continue  # another reconciler, or the attempt itself, got there first
                record_event(conn, job_id=job_id, type=EventType.for_status(str(values["status"])))
                logger.warning("job %s: lease of attempt %s on %s lapsed → %s", job_id, attempts,
                               worker, values["status"])
                if values["status"] == JobStatus.QUEUED.value:
                    requeued.append(Requeued(job_id, target))
                else:
                    ended.append(job_id)
        return requeued, ended


    def jobs_with_lost_attempts(
        self, *, finished_within_seconds: float, limit: int = 200
    ) -> list[AttemptsOfJob]:
        """Jobs whose unpublished attempts may have left outputs in the artifact store.

        That is: running jobs past their first claim, queued jobs that were claimed before, and
        jobs that finished within ``finished_within_seconds`` after several claims or without
        publishing their last attempt. A stale attempt writes only while it is alive; one that
        dies mid-write leaves files that the next sweep in the window removes.

        Args:
            finished_within_seconds: How far back to look at finished jobs.
            limit: At most this many jobs, most recently updated first.

        Returns:
            Row snapshots; :meth:`AttemptsOfJob.is_garbage` says which attempts to delete.
        """
        cutoff = utcnow() - timedelta(seconds=finished_within_seconds)
        terminal = [JobStatus.SUCCEEDED.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value]
        unpublished = or_(jobs.c.published_attempt.is_(None),
                          jobs.c.published_attempt != jobs.c.fence, jobs.c.fence > 1)
        query = (
            select(jobs.c.id, jobs.c.status, jobs.c.fence, jobs.c.published_attempt)
            .where(jobs.c.fence > 0, or_(
                and_(jobs.c.status == JobStatus.RUNNING.value, jobs.c.fence > 1),
                jobs.c.status == JobStatus.QUEUED.value,
                and_(jobs.c.status.in_(terminal), jobs.c.finished_at > cutoff, unpublished,
                     jobs.c.cache_source.is_(None))))
            .order_by(jobs.c.updated_at.desc()).limit(limit)
        )
        with self._tx() as conn:
            return [AttemptsOfJob(*row) for row in conn.execute(query).all()]


def _requeue_values(now: object, message: str) -> dict[str, object]:
    return {"status": JobStatus.QUEUED.value, "stage": Stage.QUEUED.value,
            "stage_message": message, "progress": 0.0, "updated_at": now, "worker_id": None,
            "lease_expires_at": None}


def _failed_values(now: object, failure: Failure) -> dict[str, object]:
    return {"status": JobStatus.FAILED.value, "stage": Stage.DONE.value, "finished_at": now,
            "updated_at": now, "lease_expires_at": None,
            "failure": failure.model_dump(mode="json")}


def _lost_values(now: object, attempts: int, max_attempts: int, cancel: bool,
                 worker: str) -> dict[str, object]:
    if cancel:
        return {"status": JobStatus.CANCELLED.value, "stage": Stage.DONE.value,
                "stage_message": "cancelled (its worker was lost)", "finished_at": now,
                "updated_at": now, "lease_expires_at": None}
    if attempts < max_attempts:
        return _requeue_values(now, f"retrying: worker {worker} was lost (attempt {attempts})")
    failure = Failure.of(FailureCode.WORKER_LOST, (
        f"the worker running this job stopped answering (last on {worker}) {attempts} times; "
        f"Kiln gave up after {max_attempts} attempts. This is Kiln's fault, not the model's: "
        "resubmit, and report it if it happens again"))
    return _failed_values(now, failure)
