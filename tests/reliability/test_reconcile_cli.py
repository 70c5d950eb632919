"""``kiln-service reconcile --once``: a queued job whose broker message was lost is sent again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from sqlalchemy import update

from kiln_service import migrations
from kiln_service.config import Settings
from kiln_service.queue import create_celery_app
from kiln_service.stores._schema import jobs, utcnow
from kiln_service.stores.jobs import JobStore

BIN = Path(sys.executable).parent


def _messages(settings: Settings, queue: str, *, expected: int) -> list[str]:
    """Drain ``queue`` of the embedded broker (waiting up to 10 s for each expected message)."""
    found = []
    with create_celery_app(settings).connection_for_read() as conn:
        q = conn.SimpleQueue(queue, no_ack=False)
        while True:
            try:
                msg = q.get(timeout=10.0 if len(found) < expected else 0.5)
            except q.Empty:
                break
            found.append(msg.decode()[0][0])
            msg.ack()
        q.close()
    return found


def test_reconcile_once_resends_a_lost_queued_job(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    url = settings.resolved_database_url
    migrations.upgrade(url)
    store = JobStore(url)
    lost = store.create_job(target="xla", timeout_seconds=60, input_digests={"model": "a" * 64})
    fresh = store.create_job(target="xla", timeout_seconds=60, input_digests={"model": "b" * 64})
    with store._tx() as conn:  # the lost job's message vanished a minute ago
        conn.execute(update(jobs).where(jobs.c.id == lost.id)
                     .values(updated_at=utcnow() - timedelta(seconds=60)))
    store.dispose()
    env = {**os.environ, "KILN_DATA_DIR": str(tmp_path), "KILN_REQUEUE_AFTER_SECONDS": "30"}
    env.pop("KILN_DATABASE_URL", None)
    env.pop("KILN_BROKER_URL", None)
    result = subprocess.run([str(BIN / "kiln-service"), "reconcile", "--once"], env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert counts["requeued"] == 1 and counts["send_failed"] == 0, counts
    assert _messages(settings, "kiln.xla", expected=1) == [lost.id]
    assert fresh.id != lost.id
