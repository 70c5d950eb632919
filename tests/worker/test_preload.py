"""The compile rehearsal of a process started ahead (``kiln_worker._preload``)."""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pytest

from kiln_worker import _preload, runner


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """TMPDIR as a compile process has it: a folder of the job's own."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def _rehearsal_folders(scratch: Path) -> list[Path]:
    # (AutoGraph's generated modules stay in TMPDIR, as they do for a job: the folder goes.)
    return [p for p in scratch.iterdir() if p.name.startswith("kiln-rehearsal-")]


def test_the_rehearsal_compiles_through_the_job_path_and_leaves_nothing(
        scratch: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    reports: list[dict[str, Any]] = []
    real = runner._compile

    def recording(spec: Any, events: Any) -> None:
        real(spec, events)
        reports.append(json.loads((Path(spec.output_dir) / "report.json").read_text()))

    monkeypatch.setattr(runner, "_compile", recording)
    root_level = logging.getLogger().level
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        _preload.rehearse_compile()
    [report] = reports
    assert report["numerical_check"]["within_tolerance"] is True
    assert report["tracer"]["ops_on_accelerator"] > 0  # an XLA compile really ran
    assert report["speed"]["batches"]  # and the speed measurement, as a job's does
    assert _rehearsal_folders(scratch) == []  # its scratch folder is gone
    assert caught == [] and caplog.records == []  # nothing reached the job's log
    assert logging.getLogger().level == root_level


def test_the_rehearsal_leaves_no_root_handler_for_the_job_to_find(
        scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A waiting process has no root handler yet. absl's first log call then installs one
    # (logging.basicConfig), and configure_logging, which defers to any installed handler,
    # would leave the job's JSON or text lines unformatted or unwritten.
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    _preload.rehearse_compile()
    assert root.handlers == []


def test_a_failed_rehearsal_costs_only_time(scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(spec: Any, events: Any) -> None:
        (Path(spec.output_dir) / "partial").write_text("x")
        raise RuntimeError("rehearsal broke")

    monkeypatch.setattr(runner, "_compile", broken)
    _preload.rehearse_compile()  # does not raise
    assert _rehearsal_folders(scratch) == []

