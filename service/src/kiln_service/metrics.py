"""Prometheus metrics of the API.

Submissions are counted where they happen (this process). Outcomes happen in workers, so they are
read from the job store, which is the truth about jobs: at each scrape, jobs finished since the
last scrape feed the ``finished`` counter and the duration and queue-wait histograms, and the
queue depth gauge is set from a count per status. Each app has its own registry (tests build many).
"""

from __future__ import annotations

import logging
import threading

from prometheus_client import CONTENT_TYPE_LATEST as PROMETHEUS_CONTENT_TYPE
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from kiln_client.models import JobStatus
from kiln_service.stores._schema import utcnow
from kiln_service.stores.jobs import JobRecord, JobStore

__all__ = ["PROMETHEUS_CONTENT_TYPE", "Metrics"]

logger = logging.getLogger(__name__)
_DURATION_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, float("inf"))
_WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, float("inf"))
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, float("inf"))
# ``*_created`` series double every counter and histogram for a value nobody graphs.
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    """The service's metrics and how to refresh them from the job store."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.submitted = Counter("kiln_jobs_submitted", "Jobs accepted by this API process.",
                                 ["target"], registry=self.registry)
        self.finished = Counter("kiln_jobs_finished", "Jobs that reached a terminal status "
                                "(seen by this API process since it started).",
                                ["status", "target"], registry=self.registry)
        self.duration = Histogram("kiln_job_duration_seconds", "Compile time: started to finished.",
                                  ["target"], buckets=_DURATION_BUCKETS, registry=self.registry)
        self.queue_wait = Histogram("kiln_job_queue_wait_seconds", "Queue wait: created to started.",
                                    ["target"], buckets=_WAIT_BUCKETS, registry=self.registry)
        self.depth = Gauge("kiln_jobs", "Jobs in the job store per status (queue depth).",
                           ["status"], registry=self.registry)
        self.failures = Counter("kiln_job_failures", "Failed jobs by failure kind and code "
                                "(seen by this API process since it started).",
                                ["target", "kind", "code"], registry=self.registry)
        self.http_requests = Counter("kiln_http_requests", "HTTP requests by route template "
                                     "and status.", ["method", "route", "status"],
                                     registry=self.registry)
        self.http_duration = Histogram("kiln_http_request_duration_seconds", "HTTP request "
                                       "duration by route template and status (to the end of "
                                       "the body).", ["method", "route", "status"],
                                       buckets=_HTTP_BUCKETS,
                                       registry=self.registry)
        self.webhook_deliveries = Counter("kiln_webhook_deliveries", "Webhook delivery attempts "
                                          "by outcome (succeeded, retrying, failed).",
                                          ["outcome"], registry=self.registry)
        self.cache_lookups = Counter("kiln_compile_cache_lookups", "Compile cache look-ups "
                                     "at submission by result (hit, miss).",
                                     ["target", "result"], registry=self.registry)
        self._watermark = utcnow()
        self._lock = threading.Lock()

    def refresh(self, store: JobStore) -> None:
        """Pull outcomes and queue depth from the job store.

        Args:
            store: The job store.
        """
        with self._lock:
            counts = store.count_by_status()
            for status in JobStatus:
                self.depth.labels(status=status.value).set(counts.get(status.value, 0))
            while True:
                batch = store.list_finished_since(since=self._watermark, limit=1000)
                for job in batch:
                    self._observe(job)
                if batch and batch[-1].finished_at is not None:
                    self._watermark = batch[-1].finished_at
                if len(batch) < 1000:
                    break

    def _observe(self, job: JobRecord) -> None:
        target = job.target
        self.finished.labels(status=job.status.value, target=target).inc()
        if job.failure is not None:
            code = job.failure.code
            self.failures.labels(target=target, kind=job.failure.kind.value,
                                 code=getattr(code, "value", code)).inc()
        if job.started_at is not None:
            self.queue_wait.labels(target=target).observe(
                max((job.started_at - job.created_at).total_seconds(), 0.0))
            if job.finished_at is not None:
                self.duration.labels(target=target).observe(
                    max((job.finished_at - job.started_at).total_seconds(), 0.0))

    def render(self) -> bytes:
        """Return the metrics in the Prometheus text format."""
        return generate_latest(self.registry)
