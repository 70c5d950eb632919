"""Helpers of the worker tests: run the compile child as the worker does, read what it did."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _support.processes import quiet_env
from _support.processes import runner_pids as runner_processes
from kiln_service import migrations
from kiln_service.config import Settings
from kiln_service.stores.artifacts import LocalArtifactStore
from kiln_service.stores.jobs import JobStore
from kiln_worker._context import WorkerContext
from kiln_worker._protocol import JobSpec, parse_event
from kiln_worker.config import WorkerSettings

__all__ = ["ZOO_SCRIPT", "RunResult", "child_env", "run_child", "runner_processes",
           "worker_context"]

ZOO_SCRIPT = Path(__file__).with_name("model_zoo.py")


def child_env() -> dict[str, str]:
    """The environment the worker gives a compile child (TensorFlow quiet, no GPU probing)."""
    return quiet_env()


@dataclass
class RunResult:
    """What a compile child did: exit status, events, stderr and its output files."""

    returncode: int
    events: list[dict[str, Any]]
    stray_stdout: list[str]
    stderr: str
    out_dir: Path
    error: dict[str, str] | None

    @property
    def report(self) -> dict[str, Any]:
        return json.loads((self.out_dir / "report.json").read_text())

    @property
    def stages(self) -> list[str]:
        stages: list[str] = []
        for event in self.events:
            if event["event"] == "progress" and (not stages or stages[-1] != event["stage"]):
                stages.append(event["stage"])
        return stages


def run_child(tmp: Path, model_dir: Path, **spec_fields: Any) -> RunResult:
    """Run ``python -m kiln_worker.runner`` on ``model_dir`` as the worker would."""
    out = tmp / "out"
    out.mkdir(parents=True)
    spec = JobSpec(job_id="test", model_dir=str(model_dir), output_dir=str(out),
                   error_file=str(tmp / "error.json"), **spec_fields)
    spec.write(tmp / "spec.json")
    proc = subprocess.run([sys.executable, "-m", "kiln_worker.runner", str(tmp / "spec.json")],
                          capture_output=True, text=True, env=child_env(), cwd=tmp, timeout=600)
    events, stray = [], []
    for line in proc.stdout.splitlines():
        event = parse_event(line)
        (events.append(event) if event is not None else stray.append(line))
    error_file = tmp / "error.json"
    error = json.loads(error_file.read_text()) if error_file.exists() else None
    return RunResult(proc.returncode, events, stray, proc.stderr, out, error)


@contextlib.contextmanager
def worker_context(tmp_path: Path, **options: Any) -> Iterator[WorkerContext]:
    """A worker's stores (SQLite, local artifacts under ``tmp_path``) and quick settings."""
    settings = Settings(data_dir=tmp_path / "data")
    migrations.upgrade(settings.resolved_database_url)
    store = JobStore(settings.resolved_database_url)
    worker = WorkerSettings(poll_seconds=0.2, kill_grace_seconds=1.0, log_flush_seconds=0.2,
                            work_dir=tmp_path / "work", **options)
    try:
        yield WorkerContext(settings=settings, options=worker, jobs=store,
                            artifacts=LocalArtifactStore(tmp_path / "data" / "artifacts"))
    finally:
        store.dispose()
