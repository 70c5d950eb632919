"""The worker's side of a job, for compile cache tests that need no real compile.

:func:`finish_like_a_worker` does what ``kiln-worker`` does after a compile: claim, store the
outputs under the attempt's keys, finish the job, and record its outcome in the compile cache
(``kiln_service.cache.record_outcome``). End-to-end tests with a real compile are in
``tests/integration/test_integration_cache.py``.
"""

from __future__ import annotations

from collections.abc import Mapping

from kiln_client.models import Artifact, Failure
from kiln_service import cache
from kiln_service.stores.artifacts import ArtifactStore, artifact_key
from kiln_service.stores.jobs import JobStore

__all__ = ["TOOLCHAIN", "finish_like_a_worker"]

#: what a test "worker" advertises for ``xla`` (``kiln_worker._advertise.toolchains``' shape)
TOOLCHAIN = {"kiln-worker": "0.1.0", "tensorflow": "2.21.0", "tf-keras": "2.21.0",
             "default-placement": "measured", "backend": "xla"}


def finish_like_a_worker(store: JobStore, artifacts: ArtifactStore, job_id: str, *,
                         max_bytes: int, failure: Failure | None = None,
                         toolchain: Mapping[str, str] = TOOLCHAIN) -> list[Artifact]:
    """Claim, store small outputs, finish (failed with ``failure`` if given), record the outcome.

    Returns:
        The artifacts the job lists.
    """
    claimed = store.claim_job(job_id=job_id, worker_id="test-worker")
    if claimed is None:
        raise AssertionError(f"job {job_id} was not claimable")
    outputs = {"compile.log": b"log of " + job_id.encode()}
    if failure is None:
        outputs |= {"compiled_model.tar.gz": b"compiled " + job_id.encode(), "report.json": b"{}"}
    arts = []
    for name, data in outputs.items():
        size, sha = artifacts.put_stream(artifact_key(job_id, name, claimed.fence), [data])
        arts.append(Artifact(name=name, size=size, sha256=sha))
    done = store.finish_job(job_id=job_id, status="failed" if failure else "succeeded",
                            failure=failure, artifacts=arts, fence=claimed.fence)
    if done is None:
        raise AssertionError(f"job {job_id} could not finish")
    cache.record_outcome(store, artifacts, job=done, toolchain=toolchain, max_bytes=max_bytes)
    return arts
