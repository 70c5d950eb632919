"""Progress bars are drawn on terminals only."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pytest
from client_fakes import Recorder, job_payload

from kiln_client._progress import ProgressBar, progress_enabled


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_quiet_when_not_a_tty() -> None:
    assert progress_enabled(True, io.StringIO()) is False
    assert progress_enabled(False, FakeTTY()) is False
    assert progress_enabled(True, FakeTTY()) is True


def test_bar_draws_on_tty_and_nothing_when_disabled() -> None:
    tty = FakeTTY()
    bar = ProgressBar("upload", total=2048, enabled=progress_enabled(True, tty), stream=tty)
    bar.advance(1024)
    bar.advance(1024)
    bar.close()
    assert "100%" in tty.getvalue() and tty.getvalue().endswith("\n")
    pipe = io.StringIO()
    quiet = ProgressBar("upload", total=10, enabled=progress_enabled(True, pipe), stream=pipe)
    quiet.advance(10)
    quiet.close()
    assert pipe.getvalue() == ""


def test_compile_prints_nothing_on_non_tty_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = tmp_path / "m.tar.gz"
    archive.write_bytes(b"x" * 10000)

    def handler(req: httpx.Request, i: int) -> httpx.Response:
        if req.method == "POST":
            return httpx.Response(202, json=job_payload())
        return httpx.Response(200, json=job_payload(status="succeeded", progress=1.0))

    Recorder(handler).client().compile(archive, progress=True)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
