"""The reconciler: the job store is the truth, the broker is only a hint.

One pass (:meth:`Reconciler.run_once`):

* ``queued`` jobs not updated for ``KILN_REQUEUE_AFTER_SECONDS`` (default 30) are sent to the
  broker again: their message may have been lost (a broker restarted without persistence, an
  enqueue that failed after the job was committed). A duplicate message is harmless: the task
  claims the job atomically and skips a job that is no longer queued.
* ``running`` jobs whose lease lapsed (their worker was killed, or lost the database for longer
  than a lease) go back to ``queued`` and are re-sent, until ``KILN_MAX_ATTEMPTS`` (3) attempts
  were made; then they fail with ``system_error`` ``WorkerLost``.
* Outputs of attempts that lost (``jobs/<id>/attempt-<n>/`` of an attempt that is not the one
  the job published, and can no longer be) are deleted from the artifact store, when the
  reconciler was given one. A stale attempt whose finish is refused deletes its own; this pass
  removes what an attempt killed mid-write left, for jobs running, queued, or finished within
  the last hour.

Every worker runs the loop in a daemon thread (:class:`ReconcilerThread`) every
``KILN_RECONCILE_INTERVAL_SECONDS`` (10). Several reconcilers never fight: each transition is a
conditional ``UPDATE`` that exactly one of them wins, and only the winner re-sends.

Recovery bound with the defaults: a running attempt renews its lease (``KILN_WORKER_LEASE_SECONDS``,
40 s) every third of it, so a worker killed mid-job leaves a lease that lapses at most 40 s later;
the next reconciler pass (≤ 10 s) re-sends the job and a live worker claims it: ≤ 50 s plus the
broker's delivery, within the promised 60 s.
No TensorFlow and no worker imports here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from kiln_service.errors import StoreError
from kiln_service.stores._recovery_ops import DEFAULT_MAX_ATTEMPTS, Requeued
from kiln_service.stores.artifacts import ArtifactStore, delete_attempts, list_attempts
from kiln_service.stores.jobs import JobStore

__all__ = ["ReconcileSettings", "Reconciler", "ReconcilerThread"]

logger = logging.getLogger(__name__)

Enqueue = Callable[[str, str], object]
"""``enqueue(job_id, target)``: send ``kiln.compile`` (raises when the broker is down)."""

#: finished jobs are swept for outputs of lost attempts for this long after they finish
SWEEP_FINISHED_WITHIN_SECONDS = 3600.0


class ReconcileSettings(BaseSettings):
    """The reconciler's settings (``KILN_*``)."""

    model_config = SettingsConfigDict(env_prefix="KILN_", extra="ignore")

    requeue_after_seconds: float = Field(default=30.0, gt=0)
    """Re-send a ``queued`` job nothing touched for this long."""
    reconcile_interval_seconds: float = Field(default=10.0, gt=0)
    """Seconds between reconciler passes."""
    max_attempts: int = Field(default=DEFAULT_MAX_ATTEMPTS, ge=1)
    """Attempts a job gets in all before a system error (or a lost worker) fails it."""


class Reconciler:
    """One reconciler over a job store, re-sending jobs with ``enqueue``.

    Args:
        store: The job store.
        enqueue: Sends ``kiln.compile`` for ``(job_id, target)``.
        settings: Thresholds (default: from the environment).
        artifacts: The artifact store, to delete outputs of attempts that lost (none: skipped).
    """

    def __init__(self, store: JobStore, enqueue: Enqueue,
                 settings: ReconcileSettings | None = None,
                 artifacts: ArtifactStore | None = None) -> None:
        self.store = store
        self.enqueue = enqueue
        self.settings = settings or ReconcileSettings()
        self.artifacts = artifacts

    def run_once(self) -> dict[str, int]:
        """Run one pass.

        Returns:
            Counts: ``requeued`` (stale queued jobs re-sent), ``recovered`` (lapsed running jobs
            queued again), ``ended`` (lapsed jobs failed or cancelled), ``send_failed``,
            ``attempts_swept`` (outputs of lost attempts deleted).

        Raises:
            StoreError: The database failed (the next pass tries again).
        """
        recovered, ended = self.store.recover_expired_leases(max_attempts=self.settings.max_attempts)
        stale = self.store.requeue_stale_queued(older_than_seconds=self.settings.requeue_after_seconds)
        failed = self._send([*recovered, *stale])
        counts = {"requeued": len(stale), "recovered": len(recovered), "ended": len(ended),
                  "send_failed": failed, "attempts_swept": self.sweep_lost_attempts()}
        if any(counts.values()):
            logger.info("reconciler pass: %s", counts)
        return counts

    def sweep_lost_attempts(self) -> int:
        """Delete the stored outputs of attempts that lost; return how many attempts were swept.

        A store error on one job is logged and the others go on (the next pass retries).
        """
        if self.artifacts is None:
            return 0
        swept = 0
        for job in self.store.jobs_with_lost_attempts(
                finished_within_seconds=SWEEP_FINISHED_WITHIN_SECONDS):
            try:
                lost = [n for n in list_attempts(self.artifacts, job.job_id) if job.is_garbage(n)]
                if lost:
                    delete_attempts(self.artifacts, job.job_id, lost)
            except StoreError as exc:
                logger.warning("reconciler: could not sweep job %s: %s", job.job_id, exc.detail)
                continue
            if lost:
                logger.info("job %s: deleted the outputs of lost attempts %s", job.job_id, lost)
            swept += len(lost)
        return swept

    def _send(self, jobs: list[Requeued]) -> int:
        failed = 0
        for job in jobs:
            try:
                self.enqueue(job.job_id, job.target)
            except Exception as exc:  # the job stays queued; a later pass re-sends it
                failed += 1
                logger.warning("reconciler: could not re-send job %s: %s", job.job_id, exc)
        return failed


class ReconcilerThread:
    """Runs :meth:`Reconciler.run_once` every interval in a daemon thread until stopped."""

    def __init__(self, reconciler: Reconciler) -> None:
        self.reconciler = reconciler
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the loop (the first pass runs after one interval)."""
        self._thread = threading.Thread(target=self._run, name="kiln-reconcile", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        interval = self.reconciler.settings.reconcile_interval_seconds
        while not self._stop.wait(interval):
            try:
                self.reconciler.run_once()
            except StoreError as exc:
                logger.warning("reconciler: job store unavailable: %s", exc.detail)
            except Exception:  # never let the thread die: the next pass may work
                logger.exception("reconciler pass failed")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop and wait up to ``timeout`` seconds for the current pass."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
