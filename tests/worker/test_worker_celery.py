"""The Celery side of the worker never imports TensorFlow (checked in a fresh interpreter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kiln_worker import cli
from kiln_worker.config import WorkerSettings

PROBE = """
import json, sys
from kiln_service.config import Settings
from kiln_worker import tasks
from kiln_worker.celery_app import create_worker_app
from kiln_worker.config import WorkerSettings
app = create_worker_app(Settings(), WorkerSettings(targets="xla,inf1", concurrency=2))
conf = app.conf
print(json.dumps({
    "tf": sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow.")),
    "keras": "tf_keras" in sys.modules or "keras" in sys.modules,
    "tasks": sorted(t for t in app.tasks if t.startswith("kiln.")),
    "acks_late": conf.task_acks_late, "prefetch": conf.worker_prefetch_multiplier,
    "max_tasks_per_child": conf.worker_max_tasks_per_child,
    "concurrency": conf.worker_concurrency,
    "queues": sorted(q.name for q in conf.task_queues),
    "polling": conf.broker_transport_options.get("polling_interval"),
    "remote_control": conf.worker_enable_remote_control,
}))
"""


def test_task_module_and_app_config_load_no_tensorflow(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    env["KILN_DATA_DIR"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         check=True, timeout=120).stdout
    probe = json.loads(out.strip().splitlines()[-1])
    assert probe["tf"] == []
    assert probe["keras"] is False
    assert probe["tasks"] == ["kiln.compile"]
    assert probe["acks_late"] is True and probe["prefetch"] == 1
    assert probe["max_tasks_per_child"] >= 1 and probe["concurrency"] == 2
    assert probe["queues"] == ["kiln.inf1", "kiln.xla"]
    assert probe["polling"] is not None and probe["polling"] < 1  # embedded transport is prompt
    assert probe["remote_control"] is False


def test_cli_rejects_unknown_targets() -> None:
    proc = subprocess.run([sys.executable, "-m", "kiln_worker.cli", "--targets", "xla,tpu"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "tpu" in proc.stderr and "xla" in proc.stderr and "inf1" in proc.stderr


@pytest.mark.parametrize(("argv", "message"), [
    (["--concurrency", "0"], "--concurrency must be at least 1"),
    (["--hostname", " "], "--hostname must not be empty"),
])
def test_cli_rejects_bad_arguments_before_starting(argv: list[str], message: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_celery_worker_arguments() -> None:
    options = WorkerSettings(targets="xla,inf1", concurrency=2)
    args = cli._celery_worker_args(options, "kiln.xla,kiln.inf1", "DEBUG", None)
    assert args[0] == "worker"
    assert {"--loglevel=DEBUG", "--queues=kiln.xla,kiln.inf1", "--concurrency=2", "--pool=prefork",
            "--hostname=kiln-xla-inf1@%h"} <= set(args)
    named = cli._celery_worker_args(options, "kiln.xla", "INFO", "kiln-xla-2@%h")
    assert named[-1] == "--hostname=kiln-xla-2@%h"
