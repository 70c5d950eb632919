"""The ``kiln`` CLI over a MockTransport: argument parsing, stdout/stderr split, exit codes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from client_fakes import Recorder, job_payload, problem

import kiln_client
import kiln_client.cli as cli

JOB_ID = "b" * 32


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[httpx.Request, int], httpx.Response]], Recorder]:
    """Point the CLI's Client at a recording MockTransport."""

    def install(handler: Callable[[httpx.Request, int], httpx.Response]) -> Recorder:
        rec = Recorder(handler)

        def factory(base_url: str | None = None, **kwargs: Any) -> kiln_client.Client:
            return rec.client(poll_interval=0.001)

        monkeypatch.setattr(cli, "Client", factory)
        return rec

    return install


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    path = tmp_path / "model.tgz"
    path.write_bytes(b"archive bytes")
    return path


def test_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for line in ("0  success", "1  the job failed", "2  usage error", "3  API or network error",
                 "4  waiting timed out", "5  the job was cancelled", "KILN_URL", "KILN_DEBUG"):
        assert line in out


@pytest.mark.parametrize("argv", [[], ["compile"], ["jobs"], ["jobs", "show"], ["jobs", "frobnicate"],
                                  ["compile", "m", "--label", "novalue"], ["compile", "m", "--timeout", "x"]])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == cli.EXIT_USAGE
    assert "usage: kiln" in capsys.readouterr().err


def test_compile_no_wait_prints_id_and_sends_options(serve: Any, archive: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    rec = serve(lambda req, i: httpx.Response(202, json=job_payload(JOB_ID)))
    code = cli.main(["compile", str(archive), "--flags", "--dynamic-batch-size", "--name", "n",
                     "--label", "team=vision", "--timeout", "60", "--no-wait"])
    out, err = capsys.readouterr()
    assert code == 0
    assert out.strip() == JOB_ID
    assert f"job {JOB_ID} queued" in err
    body = rec.bodies[0]
    assert b"--dynamic-batch-size" in body and b'{"team": "vision"}' in body and b"60" in body


@pytest.mark.parametrize("mode", ["measured", "all"])
def test_compile_placement_option_sends_the_mode(serve: Any, archive: Path, mode: str) -> None:
    rec = serve(lambda req, i: httpx.Response(202, json=job_payload(JOB_ID)))
    assert cli.main(["-q", "compile", str(archive), "--placement", mode, "--no-wait"]) == 0
    assert f'name="placement"\r\n\r\n{{"mode":"{mode}"'.encode() in rec.bodies[0]


def test_compile_unknown_placement_is_a_usage_error(archive: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["compile", str(archive), "--placement", "fastest"])
    assert exit_info.value.code == 2
    assert "measured" in capsys.readouterr().err


def _compile_then(final: dict[str, Any]) -> Callable[[httpx.Request, int], httpx.Response]:
    def handler(req: httpx.Request, i: int) -> httpx.Response:
        if req.method == "POST":
            return httpx.Response(202, json=job_payload(JOB_ID))
        if req.url.path.endswith("/logs"):
            return httpx.Response(200, text="loading\ntracing\nboom: op Foo unsupported")
        return httpx.Response(200, json=job_payload(JOB_ID, **final))
    return handler


def test_compile_failed_job_exits_1_with_reason(serve: Any, archive: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    failure = {"kind": "client_error", "code": "UnsupportedModel", "message": "op Foo is not supported"}
    serve(_compile_then({"status": "failed", "failure": failure}))
    code = cli.main(["compile", str(archive)])
    out, err = capsys.readouterr()
    assert code == cli.EXIT_FAILED
    assert "op Foo is not supported" in err and "boom: op Foo unsupported" in err
    assert "what to do: Remove or rewrite the part the message names" in err  # the catalogue's
    assert "Traceback" not in err
    assert out == ""


def test_compile_cancelled_exits_5(serve: Any, archive: Path) -> None:
    serve(_compile_then({"status": "cancelled"}))
    assert cli.main(["compile", str(archive)]) == cli.EXIT_CANCELLED


def test_compile_wait_timeout_exits_4(serve: Any, archive: Path, capsys: pytest.CaptureFixture[str]) -> None:
    serve(_compile_then({"status": "running"}))
    assert cli.main(["compile", str(archive), "--wait-timeout", "0.01", "--json"]) == cli.EXIT_TIMEOUT
    out, err = capsys.readouterr()
    assert json.loads(out)["status"] == "running"
    assert "still running" in err


def test_compile_json_prints_the_api_object(serve: Any, archive: Path, capsys: pytest.CaptureFixture[str]) -> None:
    serve(_compile_then({"status": "succeeded", "progress": 1.0}))
    assert cli.main(["compile", str(archive), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["id"] == JOB_ID and printed["status"] == "succeeded"


def test_bad_model_path_exits_2(serve: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = serve(lambda req, i: httpx.Response(202, json=job_payload()))
    assert cli.main(["compile", str(tmp_path / "nope")]) == cli.EXIT_USAGE
    assert "does not exist" in capsys.readouterr().err
    assert rec.requests == []


def test_api_error_exits_3_with_one_line(serve: Any, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    serve(lambda req, i: problem(404, "job_not_found", "No job with id 'x'", request_id="r-9"))
    assert cli.main(["jobs", "show", "x"]) == cli.EXIT_API
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No job with id" in err and "r-9" in err
    monkeypatch.setenv("KILN_DEBUG", "1")
    assert cli.main(["jobs", "show", "x"]) == cli.EXIT_API
    assert "Traceback" in capsys.readouterr().err


def test_connection_error_exits_3(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    def refuse(req: httpx.Request, i: int) -> httpx.Response:
        raise httpx.ConnectError("refused", request=req)

    serve(refuse)
    assert cli.main(["jobs", "list"]) == cli.EXIT_API
    assert "could not reach Kiln" in capsys.readouterr().err


def test_jobs_list_table_and_json(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    ids = [f"{i:032x}" for i in range(3)]
    rec = serve(lambda req, i: httpx.Response(200, json={"items": [job_payload(j, name=f"n{j[-1]}") for j in ids]}))
    assert cli.main(["jobs", "list", "--status", "queued", "--label", "a=b"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ids
    assert rec.requests[0].url.params["label"] == "a:b"
    assert cli.main(["jobs", "list", "--json", "--limit", "2"]) == 0
    assert [j["id"] for j in json.loads(capsys.readouterr().out)] == ids[:2]


def test_jobs_show_logs_cancel_delete(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    def handler(req: httpx.Request, i: int) -> httpx.Response:
        if req.url.path.endswith("/logs"):
            return httpx.Response(200, text="one\ntwo\n")
        if req.url.path.endswith("/cancel"):
            return httpx.Response(200, json=job_payload(JOB_ID, status="cancelled"))
        if req.method == "DELETE":
            return httpx.Response(204)
        return httpx.Response(200, json=job_payload(JOB_ID, status="running", stage_message="compiling subgraph 1 of 2"))

    rec = serve(handler)
    assert cli.main(["jobs", "show", JOB_ID]) == 0
    assert "compiling subgraph 1 of 2" in capsys.readouterr().out
    assert cli.main(["jobs", "logs", JOB_ID]) == 0
    assert capsys.readouterr().out == "one\ntwo\n"
    assert cli.main(["jobs", "cancel", JOB_ID, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "cancelled"
    assert cli.main(["jobs", "delete", JOB_ID]) == 0
    assert capsys.readouterr().out == ""
    assert [r.method for r in rec.requests][-1] == "DELETE"


def test_jobs_download_artifact(serve: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    content = b'{"ops_total": 3}'

    def handler(req: httpx.Request, i: int) -> httpx.Response:
        if "/artifacts/" in req.url.path:
            return httpx.Response(200, content=content,
                                  headers={"x-checksum-sha256": hashlib.sha256(content).hexdigest()})
        return httpx.Response(200, json=job_payload(JOB_ID, status="succeeded"))

    serve(handler)
    assert cli.main(["jobs", "download", JOB_ID, "--artifact", "report.json", "--out", str(tmp_path)]) == 0
    printed = Path(capsys.readouterr().out.strip())
    assert printed == tmp_path / "report.json" and printed.read_bytes() == content


def test_out_with_no_wait_is_a_usage_error(serve: Any, archive: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = serve(lambda req, i: httpx.Response(202, json=job_payload(JOB_ID)))
    assert cli.main(["compile", str(archive), "--no-wait", "--out", "x"]) == cli.EXIT_USAGE
    assert "kiln jobs download" in capsys.readouterr().err
    assert rec.requests == []


def test_compile_names_a_cache_hit_and_no_cache_opts_out(serve: Any, archive: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    source = "c" * 32
    hit = job_payload(JOB_ID, status="succeeded", stage="done", cache={"hit": True, "job": source})
    rec = serve(lambda req, i: httpx.Response(202, json=hit))
    assert cli.main(["compile", str(archive), "--no-wait"]) == 0
    assert b'name="cache"' not in rec.bodies[0]
    assert f"job {JOB_ID} answered from the compile cache (job {source})" in capsys.readouterr().err
    assert cli.main(["-q", "compile", str(archive), "--no-cache", "--no-wait"]) == 0
    assert b'name="cache"\r\n\r\nfalse' in rec.bodies[1]


def test_cache_purge_and_show(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    def handler(req: httpx.Request, i: int) -> httpx.Response:
        purged = {"purged": 3} if req.method == "DELETE" else {}
        return httpx.Response(200, json={"entries": 0, "bytes": 0, "max_bytes": 10, **purged})

    rec = serve(handler)
    assert cli.main(["cache", "purge"]) == 0
    out, err = capsys.readouterr()
    assert "3 entries purged" in err and "entries: 0" in out
    assert cli.main(["cache", "show", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"entries": 0, "bytes": 0, "max_bytes": 10}
    assert [(r.method, r.url.path) for r in rec.requests] == [("DELETE", "/v1/cache"),
                                                                ("GET", "/v1/cache")]
