"""Settings: embedded defaults under the data dir, environment overrides, unsafe values refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from kiln_service.config import Settings
from kiln_service.stores.artifacts import LocalArtifactStore, check_key, open_artifact_store


def test_embedded_defaults_live_under_the_data_dir(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    assert s.resolved_database_url == f"sqlite:///{tmp_path}/kiln.db" and s.should_auto_migrate
    assert s.resolved_storage_url == f"file://{tmp_path}/artifacts"
    assert s.broker_url == "filesystem://" and s.broker_dir == tmp_path / "broker"
    assert s.max_upload_bytes == 2 * 1024**3 and s.default_timeout_seconds == 900


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KILN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("KILN_DATABASE_URL", "postgresql+psycopg://u@h/db")
    monkeypatch.setenv("KILN_MAX_UPLOAD_BYTES", "1000")
    s = Settings()
    assert s.data_dir == tmp_path and s.max_upload_bytes == 1000
    assert not s.is_sqlite and not s.should_auto_migrate


@pytest.mark.parametrize("kwargs", [
    {"default_timeout_seconds": 10, "max_timeout_seconds": 5},
    {"max_upload_bytes": 100, "max_request_bytes": 50},
    {"max_upload_bytes": 0},
])
def test_unsafe_values_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValidationError):
        Settings(**kwargs)  # type: ignore[arg-type]


def test_artifact_keys_cannot_escape_the_store(tmp_path: Path) -> None:
    store = open_artifact_store(f"file://{tmp_path}/a")
    assert isinstance(store, LocalArtifactStore)
    for bad in ("../x", "jobs/../../etc/passwd", "/abs", "jobs//x", "jobs/.hidden", ""):
        with pytest.raises(ValueError):
            check_key(bad)
    size, sha = store.put_stream("jobs/j1/upload/model", [b"ab", b"cd"])
    assert (size, store.size("jobs/j1/upload/model")) == (4, 4) and len(sha) == 64
    assert store.list_prefix("jobs/j1/") == ["jobs/j1/upload/model"]
    assert store.delete_prefix("jobs/j1/") == 1 and not store.exists("jobs/j1/upload/model")
    with pytest.raises(ValueError, match="unsupported"):
        open_artifact_store("ftp://x/y")


def test_put_stream_over_the_cap_keeps_nothing(tmp_path: Path) -> None:
    from kiln_service.errors import PayloadTooLargeError

    store = LocalArtifactStore(tmp_path / "a")
    with pytest.raises(PayloadTooLargeError):
        store.put_stream("jobs/j2/big", [b"x" * 4, b"y" * 4], max_bytes=5)
    assert not store.exists("jobs/j2/big")
    assert [p for p in (tmp_path / "a").rglob("*") if p.is_file()] == []


def test_sweep_staging_removes_only_old_leftovers(tmp_path: Path) -> None:
    import os
    import time

    from kiln_service.main import sweep_staging

    old, new = tmp_path / "old-model", tmp_path / "new-model"
    old.write_bytes(b"x")
    new.write_bytes(b"y")
    past = time.time() - 7 * 3600
    os.utime(old, (past, past))
    assert sweep_staging(tmp_path) == 1
    assert not old.exists() and new.exists()
