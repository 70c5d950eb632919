"""Process-group supervision, the child's environment, and unpacking/packing job files."""

from __future__ import annotations

import io
import os
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from kiln_worker._supervise import ChildProcess, child_environment
from kiln_worker._upload import UploadError, pack_dir, unpack_model


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes.
    state = Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}").exists() else "X"
    return state not in ("Z", "X")


def test_kill_group_takes_grandchildren_too(tmp_path: Path) -> None:
    script = ("import subprocess, sys, time\n"
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
              "print(p.pid, flush=True)\n"
              "time.sleep(300)\n")
    child = ChildProcess([sys.executable, "-c", script], env=dict(os.environ), cwd=tmp_path)
    line = child.next_line(timeout=30)
    assert line is not None and line[0] == "stdout"
    grandchild = int(line[1])
    assert _alive(child.pid) and _alive(grandchild)
    assert os.getpgid(grandchild) == child.pid  # same group, led by the child
    child.kill_group(grace_seconds=1.0)
    child.finish()
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child.pid)
    assert not _alive(grandchild)


def test_output_lines_arrive_while_the_child_runs(tmp_path: Path) -> None:
    script = ("import sys, time\nprint('out', flush=True)\nprint('err', file=sys.stderr, flush=True)\n"
              "time.sleep(60)\n")
    child = ChildProcess([sys.executable, "-c", script], env=dict(os.environ), cwd=tmp_path)
    seen = {child.next_line(timeout=30), child.next_line(timeout=30)}
    assert seen == {("stdout", "out"), ("stderr", "err")}
    assert child.poll() is None  # still running: the lines came live
    child.kill_group(grace_seconds=0.5)
    child.finish()
    assert child.poll() is not None and child.poll() < 0


def test_the_end_of_the_output_wakes_the_reader_instead_of_its_timeout(tmp_path: Path) -> None:
    # The worker polls next_line with a timeout; once both pipes end, it must see the exit at
    # once, not after a timeout spent waiting for a line that never comes.
    child = ChildProcess([sys.executable, "-c", "print('last', flush=True)"],
                         env=dict(os.environ), cwd=tmp_path)
    assert child.next_line(timeout=30) == ("stdout", "last")
    start = time.monotonic()
    while child.poll() is None:
        assert child.next_line(timeout=30) is None  # the pipes' ends, never as lines
        assert time.monotonic() - start < 20, "next_line waited out its timeout"
    assert child.poll() == 0
    assert child.finish() == []


def test_child_environment_drops_credentials_and_settings(tmp_path: Path) -> None:
    base = {"PATH": "/bin", "KILN_DATABASE_URL": "postgresql://secret", "AWS_SECRET_ACCESS_KEY": "k",
            "TF_CPP_MIN_LOG_LEVEL": "1", "LANG": "C.UTF-8", "HOME": "/root"}
    env = child_environment(tmp_path, base)
    assert "KILN_DATABASE_URL" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert env["TF_CPP_MIN_LOG_LEVEL"] == "1" and env["LANG"] == "C.UTF-8"
    assert env["HOME"] == str(tmp_path) and env["TMPDIR"] == str(tmp_path)
    assert env["TF_USE_LEGACY_KERAS"] == "1"


def _saved_model_tar(path: Path, top: str = "m", extra: tarfile.TarInfo | None = None) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in ((f"{top}/saved_model.pb", b"pb"), (f"{top}/variables/v.index", b"i")):
            info = tarfile.TarInfo(name.lstrip("/"))
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra is not None:
            tar.addfile(extra, io.BytesIO(b"x" * extra.size) if extra.isfile() else None)


def test_unpack_finds_the_saved_model_one_folder_down(tmp_path: Path) -> None:
    _saved_model_tar(tmp_path / "a.tgz")
    found = unpack_model(tmp_path / "a.tgz", tmp_path / "x")
    assert found == tmp_path / "x" / "m" and (found / "variables" / "v.index").read_bytes() == b"i"


def test_unpack_zip_at_the_root(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.writestr("saved_model.pb", b"pb")
    assert unpack_model(tmp_path / "a.zip", tmp_path / "x") == tmp_path / "x"


@pytest.mark.parametrize("kind", ["symlink", "dotdot", "absolute"])
def test_unpack_refuses_escapes(tmp_path: Path, kind: str) -> None:
    if kind == "symlink":
        bad = tarfile.TarInfo("m/link")
        bad.type, bad.linkname = tarfile.SYMTYPE, "/etc/passwd"
    else:
        bad = tarfile.TarInfo("../evil" if kind == "dotdot" else "/tmp/evil")
        bad.size = 1
    _saved_model_tar(tmp_path / "a.tgz", extra=bad)
    with pytest.raises(UploadError):
        unpack_model(tmp_path / "a.tgz", tmp_path / "x")
    assert not (tmp_path / "evil").exists()


def test_unpack_without_saved_model_or_archive(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UploadError, match="neither a tar nor a zip"):
        unpack_model(tmp_path / "notes.txt", tmp_path / "x")
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.writestr("readme.md", b"no model")
    with pytest.raises(UploadError, match=r"no saved_model\.pb"):
        unpack_model(tmp_path / "a.zip", tmp_path / "y")


def test_pack_dir_skips_links(tmp_path: Path) -> None:
    work = tmp_path / "w"
    (work / "sub").mkdir(parents=True)
    (work / "sub" / "graph.pbtxt").write_text("g")
    (work / "link").symlink_to("/etc/passwd")
    count = pack_dir(work, tmp_path / "w.tgz", "workdir")
    with tarfile.open(tmp_path / "w.tgz") as tar:
        names = tar.getnames()
    assert count == 1
    assert "workdir/sub/graph.pbtxt" in names and "workdir/link" not in names


def test_child_gets_resource_limits_and_no_core_dumps(tmp_path: Path) -> None:
    import resource

    script = ("import resource, sys\n"
              "print(resource.getrlimit(resource.RLIMIT_CORE)[0], flush=True)\n"
              "open('big', 'wb').write(b'x' * 100_000)\n")
    child = ChildProcess([sys.executable, "-c", script], env=dict(os.environ), cwd=tmp_path,
                         rlimits={resource.RLIMIT_FSIZE: 10_000})
    while child.poll() is None:
        time.sleep(0.05)
    lines = child.finish()
    assert ("stdout", "0") in lines  # core dumps off
    assert child.poll() != 0
    assert any("File too large" in line for stream, line in lines if stream == "stderr")
    assert (tmp_path / "big").stat().st_size <= 10_000
