"""Small pieces of the compile task: batched log and progress writes, failure wording.

Batching matters because a compile can print thousands of lines; one job-store round trip per
line would make the database the bottleneck.
"""

from __future__ import annotations

import json
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln_client.codes import FailureCode
from kiln_client.models import Failure, Stage
from kiln_worker._protocol import parse_event

if TYPE_CHECKING:
    from kiln_worker._tracing import ChildSpans

__all__ = [
    "LogBuffer", "ProgressBuffer", "child_failure", "summarize_report", "take_line",
]

_STAGES = frozenset(stage.value for stage in Stage)
#: lines of the log kept for failure messages
_TAIL_LINES = 12
#: most lines sent to the job store in one write
_MAX_BATCH = 500
#: most lines one attempt writes to the job log; a compile printing without end must not fill
#: the database (the rest is counted and the count logged)
MAX_LOG_LINES = 50_000


class LogBuffer:
    """Collects log lines and writes them in batches.

    Args:
        write: stores a batch of lines (the job store's ``append_logs``).
        flush_seconds: longest a line waits before it is written.
    """

    def __init__(self, write: Callable[[list[str]], Any], flush_seconds: float,
                 max_lines: int = MAX_LOG_LINES) -> None:
        self._write = write
        self._flush_seconds = flush_seconds
        self._max_lines = max_lines
        self._written = 0
        self.dropped = 0
        self._pending: list[str] = []
        self._oldest = 0.0
        self._tail: deque[str] = deque(maxlen=_TAIL_LINES)

    def add(self, line: str) -> None:
        """Queue one line (written at the next due flush; dropped past ``max_lines``)."""
        self._tail.append(line)
        if self._written + len(self._pending) >= self._max_lines:
            self.dropped += 1
            return
        if not self._pending:
            self._oldest = time.monotonic()
        self._pending.append(line)
        if len(self._pending) >= _MAX_BATCH:
            self.flush()

    def flush_if_due(self, now: float) -> None:
        """Write the queued lines if the oldest has waited ``flush_seconds``."""
        if self._pending and now - self._oldest >= self._flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write the queued lines now."""
        if self._pending:
            batch, self._pending = self._pending, []
            self._written += len(batch)
            self._write(batch)

    def close(self) -> None:
        """Write what is queued, and say how many lines were dropped, if any."""
        self.flush()
        if self.dropped:
            self._write([f"[kiln] {self.dropped} more log lines were dropped (limit "
                         f"{self._max_lines} lines per attempt)"])
            self.dropped = 0

    def tail(self) -> list[str]:
        """The last lines added, oldest first."""
        return list(self._tail)


class ProgressBuffer:
    """Keeps the latest progress and writes it at most every ``flush_seconds``.

    A new stage is written at once, so that the job never skips a stage in the eyes of a
    client polling it; progress within a stage is coalesced.
    """

    def __init__(self, write: Callable[[str, float, str], Any], flush_seconds: float) -> None:
        self._write = write
        self._flush_seconds = flush_seconds
        self._latest: tuple[str, float, str] | None = None
        self._stage: str | None = None
        self._last_write = 0.0

    def set(self, stage: str, progress: float, message: str, *, force: bool = False) -> None:
        """Record progress; written now when the stage changed or ``force``."""
        self._latest = (stage, progress, message)
        if force or stage != self._stage:
            self.flush()

    def flush_if_due(self, now: float) -> None:
        """Write the latest progress if the last write is ``flush_seconds`` old."""
        if self._latest is not None and now - self._last_write >= self._flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write the latest progress now."""
        if self._latest is not None:
            stage, progress, message = self._latest
            self._latest = None
            self._stage = stage
            self._last_write = time.monotonic()
            self._write(stage, progress, message)


def child_failure(
    status: int, error_file: Path, tail: Sequence[str], *, exit_failed: int
) -> Failure:
    """The failure of a compile child that did not succeed.

    Args:
        status: its exit status (negative: the signal that killed it).
        error_file: where it wrote ``{"kind", "code", "message"}`` when it exited ``exit_failed``.
        tail: the last lines of the job log, quoted in system errors.
        exit_failed: the exit status of a failure the child understood.

    Returns:
        The failure to record on the job.
    """
    if status == exit_failed:
        try:
            data = json.loads(error_file.read_text())
            return Failure.model_validate(data)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # fall through: a broken error file is itself a worker error
    last = "\n".join(tail[-6:])
    if status < 0:
        name = signal.Signals(-status).name if -status in signal.valid_signals() else str(-status)
        if -status == signal.SIGKILL:
            return Failure.of(FailureCode.OOM_KILLED, (
                f"the compile process was killed by {name}, most likely by the out-of-memory "
                f"killer; give the worker more memory or compile a smaller model. Last log "
                f"lines:\n{last}"))
        return Failure.of(FailureCode.WORKER_ERROR, (
            f"the compile process died of {name}. Last log lines:\n{last}"))
    return Failure.of(FailureCode.WORKER_ERROR, (
        f"the compile process failed unexpectedly (exit status {status}); this is Kiln's "
        f"fault, please report it with the log. Last log lines:\n{last}"))


def summarize_report(report: dict[str, Any]) -> dict[str, Any]:
    """The short form of ``report.json`` kept on the job (the full one is an artifact)."""
    tracer = report.get("tracer") or {}
    check = report.get("numerical_check") or {}
    return {
        "backend": tracer.get("backend"),
        "ops_total": tracer.get("ops_total"),
        "ops_on_accelerator": tracer.get("ops_on_accelerator"),
        "on_neuron_ratio": tracer.get("on_neuron_ratio"),
        "subgraphs": [
            {key: sub.get(key) for key in ("name", "status", "op_types", "compile_seconds")}
            for sub in tracer.get("subgraphs") or []
        ],
        "cpu_ops": len(tracer.get("cpu_ops") or []),
        # why no subgraph was compiled (the model still runs, on CPU), cut to a line or so
        "nothing_compiled": _cut(tracer.get("nothing_compiled"), 400),
        "numerical_check": {key: check.get(key)
                            for key in ("max_abs_diff", "max_abs_output", "within_tolerance")},
        "timings": report.get("timings"),
        "warnings": list(tracer.get("warnings") or [])[:20],
        "inputs_generated": report.get("inputs_generated"),
        "speed": report.get("speed"),
    }


def _cut(text: str | None, limit: int) -> str | None:
    """``text`` cut to ``limit`` characters, saying so."""
    if text is None or len(text) <= limit:
        return text
    return text[:limit - 1] + "…"


def take_line(stream: str, line: str, logs: LogBuffer, progress: ProgressBuffer,
              spans: ChildSpans | None = None) -> None:
    """Route one line of the compile child: protocol events on stdout, the rest to the log.

    ``span`` events (the compile process's trace) go to ``spans``, never to the log.
    """
    event = parse_event(line) if stream == "stdout" else None
    if event is None:
        logs.add(line)
    elif event["event"] == "progress":
        stage, message = str(event.get("stage")), str(event.get("message", ""))
        if stage in _STAGES:
            progress.set(stage, float(event.get("progress", 0.0)), message)
        logs.add(f"[{stage}] {message}")
    elif event["event"] == "log":
        logs.add(str(event.get("line", "")))
    elif event["event"] == "span":
        if spans is not None:
            spans.take(event)
    elif event["event"] == "ready":
        logs.add("[kiln] TensorFlow loaded in the compile process")
    else:
        logs.add(line)
