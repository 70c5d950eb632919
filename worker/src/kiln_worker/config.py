"""Worker settings (``KILN_WORKER_*``), next to the service's ``KILN_*`` ones it also reads.

The worker opens the same job store, artifact store and broker as the API, so it reads
:class:`kiln_service.config.Settings` for those; what only a worker needs lives here.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kiln_service.config import TARGETS
from kiln_service.stores._recovery_ops import DEFAULT_MAX_ATTEMPTS

__all__ = [
    "WorkerSettings", "cpu_seconds", "get_worker_settings", "parse_targets", "worker_id",
]


class WorkerSettings(BaseSettings):
    """Configuration of one ``kiln-worker`` process."""

    model_config = SettingsConfigDict(env_prefix="KILN_WORKER_", extra="ignore",
                                      populate_by_name=True)

    targets: str = "xla"
    """Comma-separated targets whose queues (``kiln.<target>``) this worker consumes."""
    concurrency: int = Field(default=1, ge=1)
    """Compiles run at once (Celery pool processes); each compile is one child process."""
    max_tasks_per_child: int = Field(default=100, ge=1)
    """Recycle a pool process after this many jobs (cheap: TensorFlow never loads there)."""
    poll_seconds: float = Field(default=1.0, gt=0)
    """How often a running job checks for cancellation and its time limit."""
    log_flush_seconds: float = Field(default=0.5, gt=0)
    """Longest a log line waits in the worker before it reaches the job store."""
    kill_grace_seconds: float = Field(default=3.0, ge=0)
    """Between SIGTERM and SIGKILL when a compile is cancelled or times out."""
    advertise_seconds: float = Field(default=10.0, gt=0)
    """How often the worker refreshes its row in the job store's ``workers`` table (keep it well
    under the API's ``KILN_WORKER_LIVENESS_SECONDS``, 60 by default)."""
    lease_seconds: int = Field(default=40, ge=3)
    """Lease of a running attempt; renewed by heartbeats every third of it. A worker lost
    mid-job is noticed when it lapses, so the recovery bound is this plus the reconciler's
    interval (40 + 10 s by default)."""
    child_max_file_bytes: int | None = Field(default=4 * 2**30, gt=0)
    """Largest file a compile may write (RLIMIT_FSIZE, default 4 GiB)."""
    child_max_memory_bytes: int | None = Field(default=12 * 2**30, gt=0)
    """Memory (resident, with the page cache it causes) a compile may use, default 12 GiB:
    enforced by a memory cgroup made per compile (v2 ``memory.max`` or v1
    ``memory.limit_in_bytes``), else by watching the compile's resident memory. A compile over
    it fails once with ``client_error`` ``MemoryLimit``, the limit and the peak. ResNet50's
    compile peaks at 7.6 GiB resident with the current tracer."""
    child_max_processes: int | None = Field(default=4096, gt=0)
    """Processes plus threads a compile may run at once (the cgroup ``pids`` controller; a
    thread or fork bomb fails the job with ``ProcessLimit``). Without a pids cgroup it falls back
    to RLIMIT_NPROC, which counts every thread of the *user* and is ignored for root."""
    sandbox: Literal["bubblewrap", "none"] = "bubblewrap"
    """Isolation of compile processes (:mod:`kiln_worker._sandbox`): ``bubblewrap`` (own mount,
    PID and network namespaces, read-only system and Python, read-write job folder only; the
    worker refuses to start when it cannot) or ``none`` (explicitly allow running compiles
    without isolation: only for models you trust)."""
    sandbox_uid: int = Field(default=65534, ge=1)
    """The unprivileged user a root worker's compiles run as (default 65534, ``nobody``)."""
    max_attempts: int = Field(default=DEFAULT_MAX_ATTEMPTS, ge=1,
                              validation_alias="KILN_MAX_ATTEMPTS")
    """Attempts a job gets in all; system errors (a killed compile, storage failures) are
    retried until then, client errors never. One setting with the reconciler's:
    ``KILN_MAX_ATTEMPTS`` (not ``KILN_WORKER_…``), read by workers and ``kiln-service reconcile``."""
    warm_processes: bool = True
    """Keep one compile process started ahead per pool process (``KILN_WORKER_WARM_PROCESSES``):
    TensorFlow and Kiln imported, waiting in a job folder of its own for the next job, which
    then skips the seconds of start-up (see :mod:`kiln_worker._warm`). Each still runs exactly
    one job, with the same sandbox and limits. Costs the memory of one idle TensorFlow process
    (about 0.5 GiB) per pool process; ``false`` starts each compile process when its job comes."""
    reconcile: bool = True
    """Run the reconciler loop (:mod:`kiln_service.reconcile`) in this worker."""
    test_hook_child_sleep_seconds: float = Field(default=0.0, ge=0)
    """TEST HOOK, off by default: the compile child sleeps this long before tracing, so fault
    tests can act "mid-job". Never set it in production."""
    work_dir: Path | None = None
    """Parent of the jobs' temporary directories (default: the system temporary directory)."""

    def child_rlimits(self, timeout_seconds: int | None = None, *,
                      pids_cgroup: bool = False) -> dict[int, int]:
        """The resource limits of a compile child (``resource.RLIMIT_*`` → value).

        Memory is not among them: TensorFlow reserves far more address space than it uses, so
        RLIMIT_AS kills sound models; memory is limited by a cgroup (see
        ``child_max_memory_bytes``).

        Args:
            timeout_seconds: the job's time limit; bounds the CPU time (RLIMIT_CPU) at that many
                seconds per core plus a minute, a backstop behind the wall-clock limit.
            pids_cgroup: the compile has a pids cgroup, so RLIMIT_NPROC is not needed.
        """
        import resource

        limits: dict[int, int] = {resource.RLIMIT_CORE: 0}
        if self.child_max_file_bytes is not None:
            limits[resource.RLIMIT_FSIZE] = self.child_max_file_bytes
        if self.child_max_processes is not None and not pids_cgroup:
            limits[resource.RLIMIT_NPROC] = self.child_max_processes
        if timeout_seconds is not None:
            limits[resource.RLIMIT_CPU] = cpu_seconds(timeout_seconds)
        return limits

    @field_validator("targets")
    @classmethod
    def _known_targets(cls, value: str) -> str:
        return ",".join(parse_targets(value))


def parse_targets(value: str) -> list[str]:
    """Split ``"xla,inf1"`` into known targets.

    Raises:
        ValueError: empty, or a target the service does not know (the message lists them).
    """
    targets = [t.strip() for t in value.split(",") if t.strip()]
    unknown = [t for t in targets if t not in TARGETS]
    if not targets or unknown:
        raise ValueError(
            f"unknown target(s) {unknown or value!r}; choose from {', '.join(TARGETS)} "
            "(comma-separated, such as --targets xla,inf1)"
        )
    return list(dict.fromkeys(targets))


def cpu_seconds(timeout_seconds: int) -> int:
    """The CPU-time limit (RLIMIT_CPU) of a compile with this wall-clock limit."""
    return timeout_seconds * (os.cpu_count() or 1) + 60


def worker_id() -> str:
    """This process's identity in the job store: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


@lru_cache(maxsize=1)
def get_worker_settings() -> WorkerSettings:
    """The process's worker settings, read from the environment once."""
    return WorkerSettings()
