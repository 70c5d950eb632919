"""Standard models compile under the default limits, in the default sandbox (slow: ``-m slow``).

ResNet50 (``tf.keras.applications``, weights=None) and a BERT-base-size encoder (12 layers,
hidden 768, 12 heads, vocabulary 30522, sequence 128, batch 1) go through ``run_compile_job`` with ``WorkerSettings()`` defaults:
bubblewrap, a 12 GiB memory cgroup, 4096 processes and threads. Example inputs are generated
from the signatures. Each test prints the peaks the compile reached.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_sandbox import build, compile_job

from kiln_client.models import JobStatus
from kiln_service import migrations
from kiln_service.config import Settings
from kiln_service.stores.artifacts import LocalArtifactStore
from kiln_service.stores.jobs import JobStore
from kiln_worker._context import WorkerContext
from kiln_worker.config import WorkerSettings

HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def big_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("big")
    # One process each, both at once: each gets the builder's time limit.
    with ThreadPoolExecutor(2) as pool:
        built = [pool.submit(build, str(HERE / "_build_big_models.py"), out, name)
                 for name in ("resnet50", "bert_base")]
        for future in built:
            future.result()
    return out


@pytest.fixture
def defaults(tmp_path: Path) -> Iterator[WorkerContext]:
    settings = Settings(data_dir=tmp_path / "data")
    migrations.upgrade(settings.resolved_database_url)
    options = WorkerSettings(work_dir=tmp_path / "work")  # the default limits and sandbox
    assert options.child_max_memory_bytes == 12 * 2**30 and options.sandbox == "bubblewrap"
    ctx = WorkerContext(settings=settings, options=options,
                        jobs=JobStore(settings.resolved_database_url),
                        artifacts=LocalArtifactStore(tmp_path / "data" / "artifacts"))
    yield ctx
    ctx.jobs.dispose()


@pytest.mark.parametrize("name", ["resnet50", "bert_base"])
def test_standard_model_compiles_under_the_default_limits(
        name: str, big_models: Path, defaults: WorkerContext) -> None:
    job, log = compile_job(defaults, big_models / name / "model.tar.gz")
    report = job.report or {}
    peaks = report.get("compile_peaks") or {}
    memory = peaks.get("memory_bytes") or 0
    print(f"\n{name}: {job.status.value} after {job.attempts} attempt(s); peak memory "
          f"{memory / 2**30:.2f} GiB, peak processes+threads {peaks.get('processes')}; "
          f"timings {report.get('worker_timings')}")
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 1, (job.failure, log[-3000:])
    assert "(bubblewrap sandbox)" in log
    assert 0 < memory < 12 * 2**30
    assert {a.name for a in job.artifacts} >= {"compiled_model.tar.gz", "report.json"}
    assert report["inputs_generated"] is True
