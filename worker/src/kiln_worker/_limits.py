"""The limits of one compile process, and the failure a crossed limit or a crash becomes.

Memory and processes are limited by per-compile control groups (:mod:`kiln_worker._cgroups`),
falling back to watching resident memory and to RLIMIT_NPROC where none can be made; CPU time
and file size by resource limits. A compile that crosses one fails once, as ``client_error``
with a code naming the limit (``MemoryLimit``, ``ProcessLimit``, ``CpuTimeLimit``,
``FileSizeLimit``), its value and the peak reached: running it again would cross it again.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Sequence
from pathlib import Path

from kiln_client.codes import FailureCode
from kiln_client.models import Failure
from kiln_worker._cgroups import CgroupSupport, JobCgroups, tree_rss
from kiln_worker.config import WorkerSettings, cpu_seconds

__all__ = ["CRASH_MARK", "CompileLimits", "crash_failure", "human_bytes"]

logger = logging.getLogger(__name__)

#: the job-log line that records a compile killed by a signal (a second one fails the job)
CRASH_MARK = "[kiln] compile process died of signal"


def human_bytes(n: int | None) -> str:
    """``8589934592`` → ``8.0 GiB``."""
    if n is None:
        return "unknown"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{n} B"
        value /= 1024
    return f"{n} B"


class CompileLimits:
    """The groups and resource limits of one compile, and what it reached.

    Args:
        options: the worker settings (limit values).
        support: the control groups this worker can make.
        name: the groups' name, unique per attempt.
        timeout_seconds: the job's time limit (bounds its CPU time).
    """

    def __init__(self, options: WorkerSettings, support: CgroupSupport, name: str,
                 timeout_seconds: int) -> None:
        self.options = options
        self.timeout_seconds = timeout_seconds
        self.groups = JobCgroups(support, name, options.child_max_memory_bytes,
                                 options.child_max_processes)
        self.rss_peak = 0
        self.rss_exceeded = False

    @property
    def procs_files(self) -> list[str]:
        """Group files the compile process joins before it executes."""
        return self.groups.procs_files

    def rlimits(self) -> dict[int, int]:
        """The resource limits of the compile process."""
        return self.options.child_rlimits(self.timeout_seconds,
                                          pids_cgroup=self.groups.pids is not None)

    def watch_memory(self, pgid: int) -> bool:
        """Without a memory group: sample resident memory; ``True`` once over the limit."""
        limit = self.options.child_max_memory_bytes
        if self.groups.memory is not None or limit is None:
            return False
        rss = tree_rss(pgid)
        self.rss_peak = max(self.rss_peak, rss)
        self.rss_exceeded = self.rss_exceeded or rss > limit
        return self.rss_exceeded

    def peaks(self) -> dict[str, int | None]:
        """What the compile reached: ``memory_bytes`` (group peak, else the sampled resident
        peak) and ``processes`` (the pids group's peak), ``None`` where not measured."""
        memory = self.groups.memory_peak() if self.groups.memory is not None else \
            (self.rss_peak or None)
        return {"memory_bytes": memory, "processes": self.groups.pids_peak()}

    def close(self) -> None:
        """Remove the groups (reading them afterwards gives nothing)."""
        self.groups.close()

    def failure(self, status: int, job_dir: Path) -> Failure | None:
        """The limit the ended compile crossed, if it crossed one (``status``: negative = signal).

        Read before :meth:`close`. A limit counts only if the compile did not succeed.
        """
        opts = self.options
        if status == 0:
            return None
        if self.groups.oom_kills() > 0 or self.rss_exceeded:
            peak = self.groups.memory_peak() if self.groups.memory is not None else self.rss_peak
            return _limit(FailureCode.MEMORY_LIMIT, "memory", human_bytes(opts.child_max_memory_bytes),
                          human_bytes(peak), "reduce the model's or the example inputs' size",
                          "KILN_WORKER_CHILD_MAX_MEMORY_BYTES")
        if self.groups.pids_refused() > 0:
            peak = self.groups.pids_peak()
            return _limit(FailureCode.PROCESS_LIMIT, "processes and threads", str(opts.child_max_processes),
                          str(peak if peak is not None else opts.child_max_processes),
                          "start fewer threads or processes", "KILN_WORKER_CHILD_MAX_PROCESSES")
        if status == -signal.SIGXCPU:
            return _limit(FailureCode.CPU_TIME_LIMIT, "CPU time", f"{cpu_seconds(self.timeout_seconds)} s",
                          "the limit", "use a smaller model or a shorter timeout_seconds",
                          "timeout_seconds")
        biggest = _largest_file(job_dir)
        if opts.child_max_file_bytes is not None and biggest >= opts.child_max_file_bytes:
            return _limit(FailureCode.FILE_SIZE_LIMIT, "file size", human_bytes(opts.child_max_file_bytes),
                          human_bytes(biggest), "write smaller files (a smaller model)",
                          "KILN_WORKER_CHILD_MAX_FILE_BYTES")
        return None


def _limit(code: FailureCode, what: str, value: str, peak: str, advice: str,
           setting: str) -> Failure:
    return Failure.of(code, f"the compile crossed its {what} limit of {value} (peak {peak}) and "
                      f"was stopped; {advice}, or ask the operator to raise {setting}")


def _largest_file(root: Path) -> int:
    biggest = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                biggest = max(biggest, os.lstat(os.path.join(folder, name)).st_size)
            except OSError:
                continue
    return biggest


def crash_failure(status: int, tail: Sequence[str], *, crashed_before: bool,
                  memory_group: bool) -> Failure | None:
    """The failure of a compile killed by a signal nobody in Kiln sent, or ``None``.

    The first such death is retried (``WorkerError``, a ``system_error``: a machine may have had
    a bad moment); a second on the same job is the model's (``Crashed``, a ``client_error``). A
    SIGKILL while a memory group was in force came from outside (an operator, the host's OOM
    killer), not from crossing the job's own limit: it stays a retried ``OOMKilled``.
    """
    if status >= 0:
        return None
    sig = -status
    name = signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
    last = "\n".join(tail[-8:])
    if sig == signal.SIGKILL and memory_group:
        return Failure.of(FailureCode.OOM_KILLED, (
            f"the compile process was killed by {name} from outside the job (the machine's "
            f"out-of-memory killer or an operator), not for crossing its own limits; it is "
            f"retried. Last log lines:\n{last}"))
    if crashed_before:
        return Failure.of(FailureCode.CRASHED, (
            f"the compile process died of {name} on two attempts: the model crashes "
            f"TensorFlow (check its ops and shapes). Last log lines:\n{last}"))
    return Failure.of(FailureCode.WORKER_ERROR, (
        f"the compile process died of {name}; it is tried once more (a second death fails the "
        f"job as Crashed). Last log lines:\n{last}"))
