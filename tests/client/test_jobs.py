"""Job handles over a MockTransport: pagination, wait outcomes, logs, downloads and checksums."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest
from client_fakes import Recorder, job_payload, problem

import kiln_client


def _ids(n: int) -> list[str]:
    return [f"{i:032x}" for i in range(n)]


def test_list_iterates_over_all_pages_with_filters() -> None:
    ids = _ids(5)
    pages = {None: (ids[:2], "c1"), "c1": (ids[2:4], "c2"), "c2": (ids[4:], None)}

    def handler(req: httpx.Request, i: int) -> httpx.Response:
        cursor = req.url.params.get("cursor")
        items, nxt = pages[cursor]
        return httpx.Response(200, json={"items": [job_payload(j) for j in items], "next_cursor": nxt})

    rec = Recorder(handler)
    jobs = list(rec.client().jobs.list(status="failed", label={"team": "vision"}, target="xla", page_size=2))
    assert [j.id for j in jobs] == ids
    assert len(rec.requests) == 3
    query = parse_qs(rec.requests[0].url.query.decode())
    assert query == {"status": ["failed"], "label": ["team:vision"], "target": ["xla"], "limit": ["2"]}
    assert "cursor" not in query
    assert rec.requests[2].url.params["cursor"] == "c2"


def test_list_is_lazy() -> None:
    rec = Recorder(lambda req, i: httpx.Response(200, json={"items": [job_payload()], "next_cursor": "more"}))
    first = next(iter(rec.client().jobs.list()))
    assert first.id == "a" * 32
    assert len(rec.requests) == 1


async def test_async_list_iterates_over_pages() -> None:
    ids = _ids(3)

    def handler(req: httpx.Request, i: int) -> httpx.Response:
        if req.url.params.get("cursor") == "next":
            return httpx.Response(200, json={"items": [job_payload(ids[2])], "next_cursor": None})
        return httpx.Response(200, json={"items": [job_payload(j) for j in ids[:2]], "next_cursor": "next"})

    async with Recorder(handler).async_client() as client:
        seen = [job.id async for job in client.jobs.list(label="team=vision")]
    assert seen == ids


def _status_sequence(*statuses: dict[str, object]) -> Recorder:
    def handler(req: httpx.Request, i: int) -> httpx.Response:
        if req.url.path.endswith("/logs"):
            return httpx.Response(200, text="\n".join(f"line {n}" for n in range(30)))
        return httpx.Response(200, json=job_payload(**statuses[min(i, len(statuses) - 1)]))
    return Recorder(handler)


def test_wait_raises_job_failed_with_reason_and_log_tail() -> None:
    failure = {"kind": "client_error", "code": "UnsupportedModel", "message": "op Foo is not supported"}
    rec = _status_sequence({"status": "running"}, {"status": "failed", "failure": failure})
    job = rec.client(poll_interval=0.001).jobs.get("a" * 32)
    with pytest.raises(kiln_client.JobFailed) as info:
        job.wait()
    err = info.value
    assert err.reason == "op Foo is not supported"
    assert err.code == "UnsupportedModel" and err.kind == "client_error"
    assert err.job is job and job.failure_reason == "op Foo is not supported"
    assert err.log_tail[-1] == "line 29" and len(err.log_tail) == 20
    assert isinstance(err, kiln_client.CompileFailedError)


def test_wait_cancelled_and_timeout() -> None:
    rec = _status_sequence({"status": "running"}, {"status": "cancelled"})
    with pytest.raises(kiln_client.JobCancelled):
        rec.client(poll_interval=0.001).jobs.get("a" * 32).wait()
    running = _status_sequence({"status": "running"})
    job = running.client(poll_interval=0.001).jobs.get("a" * 32)
    with pytest.raises(kiln_client.WaitTimeout):
        job.wait(timeout=0.01)
    assert job.status is kiln_client.JobStatus.RUNNING


def test_wait_returns_failed_job_when_asked_not_to_raise() -> None:
    failure = {"kind": "system_error", "code": "WorkerLost", "message": "worker died"}
    rec = _status_sequence({"status": "failed", "failure": failure})
    job = rec.client().jobs.get("a" * 32).wait(raise_on_failure=False)
    assert job.status is kiln_client.JobStatus.FAILED and job.done


def test_logs_follow_parses_sse_and_resumes_after_a_drop() -> None:
    def handler(req: httpx.Request, i: int) -> httpx.Response:
        if req.url.path.endswith("/logs"):
            if "last-event-id" not in req.headers:
                # First stream: two lines, then the connection ends early (job still running).
                return httpx.Response(200, text="id: 1\ndata: hello\n\nid: 2\ndata: world\n\n",
                                      headers={"content-type": "text/event-stream"})
            assert req.headers["last-event-id"] == "2"
            return httpx.Response(200, text=": keepalive\n\nid: 3\ndata: done\n\nevent: end\ndata: succeeded\n\n",
                                  headers={"content-type": "text/event-stream"})
        status = "running" if i < 3 else "succeeded"
        return httpx.Response(200, json=job_payload(status=status))

    rec = Recorder(handler)
    job = rec.client().jobs.get("a" * 32)
    assert list(job.logs()) == ["hello", "world", "done"]
    assert rec.requests[1].headers["accept"] == "text/event-stream"


def _tarball(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _download_recorder(content: bytes, announced: str) -> Recorder:
    artifact = {"name": "compiled_model.tar.gz", "size": len(content), "sha256": announced}

    def handler(req: httpx.Request, i: int) -> httpx.Response:
        if "/artifacts/" in req.url.path:
            return httpx.Response(200, content=content, headers={"x-checksum-sha256": announced})
        return httpx.Response(200, json=job_payload(status="succeeded", artifacts=[artifact]))
    return Recorder(handler)


def test_download_extracts_verified_saved_model(tmp_path: Path) -> None:
    content = _tarball({"compiled/saved_model.pb": b"pb", "compiled/variables/v.index": b"ix"})
    rec = _download_recorder(content, hashlib.sha256(content).hexdigest())
    path = rec.client().jobs.get("a" * 32).download(tmp_path / "out")
    assert path == tmp_path / "out"
    assert (path / "saved_model.pb").read_bytes() == b"pb"


def test_download_checksum_mismatch_raises_and_leaves_nothing(tmp_path: Path) -> None:
    content = _tarball({"saved_model.pb": b"pb"})
    rec = _download_recorder(content, "0" * 64)
    job = rec.client().jobs.get("a" * 32)
    with pytest.raises(kiln_client.ChecksumError) as info:
        job.download_artifact("compiled_model.tar.gz", tmp_path)
    assert info.value.expected == "0" * 64
    assert info.value.actual == hashlib.sha256(content).hexdigest()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(kiln_client.ChecksumError):
        job.download(tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_download_refuses_archive_escaping_its_folder(tmp_path: Path) -> None:
    content = _tarball({"../evil.txt": b"x", "saved_model.pb": b"pb"})
    rec = _download_recorder(content, hashlib.sha256(content).hexdigest())
    with pytest.raises(kiln_client.KilnError, match="escapes"):
        rec.client().jobs.get("a" * 32).download(tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


def test_download_resumes_with_range_after_a_drop(tmp_path: Path) -> None:
    content = bytes(range(256)) * 40
    digest = hashlib.sha256(content).hexdigest()

    class Dropping(httpx.SyncByteStream):
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield content[:1000]
            raise httpx.ReadError("connection reset")

    def handler(req: httpx.Request, i: int) -> httpx.Response:
        if "/artifacts/" not in req.url.path:
            return httpx.Response(200, json=job_payload(status="succeeded"))
        if "range" in req.headers:
            assert req.headers["range"] == "bytes=1000-"
            return httpx.Response(206, content=content[1000:], headers={"x-checksum-sha256": digest})
        return httpx.Response(200, stream=Dropping(), headers={"x-checksum-sha256": digest})

    rec = Recorder(handler)
    path = rec.client().jobs.get("a" * 32).download_artifact("report.json", tmp_path)
    assert path.read_bytes() == content


async def test_async_download_checksum_mismatch(tmp_path: Path) -> None:
    content = _tarball({"saved_model.pb": b"pb"})
    async with _download_recorder(content, "f" * 64).async_client() as client:
        job = await client.jobs.get("a" * 32)
        with pytest.raises(kiln_client.ChecksumError):
            await job.download(tmp_path / "m")


def test_delete_conflict_is_typed() -> None:
    rec = Recorder(lambda req, i: problem(409, "job_state_conflict", "job is running; cancel it first"))
    with pytest.raises(kiln_client.ConflictError, match="cancel it first"):
        rec.client().jobs.delete("a" * 32)
    assert rec.requests[0].method == "DELETE"


@pytest.mark.parametrize(("given", "sent"), [("team=vision", "team:vision"), ("team:vision", "team:vision"),
                                             ("url=http://x", "url:http://x"), ("k:a=b", "k:a=b")])
def test_label_filters_use_the_first_separator(given: str, sent: str) -> None:
    rec = Recorder(lambda req, i: httpx.Response(200, json={"items": []}))
    assert list(rec.client().jobs.list(label=given)) == []
    assert rec.requests[0].url.params["label"] == sent


def test_missing_artifact_raises_not_found_and_leaves_no_file(tmp_path: Path) -> None:
    def handler(req: httpx.Request, i: int) -> httpx.Response:
        if "/artifacts/" in req.url.path:
            return problem(404, "artifact_not_found", "job has no artifact 'workdir.tar.gz'")
        return httpx.Response(200, json=job_payload(status="succeeded"))

    job = Recorder(handler).client().jobs.get("a" * 32)
    with pytest.raises(kiln_client.NotFoundError, match=r"workdir\.tar\.gz"):
        job.download_artifact("workdir.tar.gz", tmp_path)
    assert list(tmp_path.iterdir()) == []


def _presigning_recorder(content: bytes) -> Recorder:
    """The API answers 307 to a presigned store URL, as with an S3 artifact store."""
    sha = hashlib.sha256(content).hexdigest()
    artifact = {"name": "report.json", "size": len(content), "sha256": sha}

    def handler(req: httpx.Request, i: int) -> httpx.Response:
        if req.url.host == "store.test":
            return httpx.Response(200, content=content)
        if "/artifacts/" in req.url.path:
            assert parse_qs(req.url.query.decode()) == {"redirect": ["true"]}
            return httpx.Response(307, headers={"location": "http://store.test/o?X-Amz-Signature=s",
                                                "x-checksum-sha256": sha})
        return httpx.Response(200, json=job_payload(status="succeeded", artifacts=[artifact]))
    return Recorder(handler)


def test_download_follows_a_presigned_redirect_without_the_api_key(tmp_path: Path) -> None:
    rec = _presigning_recorder(b'{"ops_total": 3}')
    job = rec.client(api_key="kiln_secret").jobs.get("a" * 32)
    assert job.download_artifact("report.json", tmp_path).read_bytes() == b'{"ops_total": 3}'
    (direct,) = [r for r in rec.requests if r.url.host == "store.test"]
    assert "authorization" not in direct.headers
    assert rec.requests[0].headers["authorization"] == "Bearer kiln_secret"


async def test_async_download_follows_a_presigned_redirect(tmp_path: Path) -> None:
    rec = _presigning_recorder(b"abc")
    job = await rec.async_client(api_key="kiln_secret").jobs.get("a" * 32)
    assert (await job.download_artifact("report.json", tmp_path)).read_bytes() == b"abc"
    (direct,) = [r for r in rec.requests if r.url.host == "store.test"]
    assert "authorization" not in direct.headers
