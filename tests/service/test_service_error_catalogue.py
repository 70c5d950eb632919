"""The closed catalogues of codes: the enums, the page that documents them, the type URIs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from service_helpers import assert_problem

from kiln_client.codes import CLIENT_ERROR_CODES, SYSTEM_ERROR_CODES, FailureCode, FailureKind
from kiln_client.models import Failure
from kiln_client.problem_codes import ProblemCode
from kiln_service.errors_page import render_markdown

ROOT = Path(__file__).resolve().parents[2]
#: a problem code given as a literal in the service's source: ``code="x"``, ``code = "x"``,
#: ``reject("x", ...)`` (the archive and ingest checks' helper)
_PROBLEM_LITERAL = re.compile(r'\bcode\s*[:=]\s*(?:str\s*=\s*)?"([a-z_]+)"|\breject\(\s*"([a-z_]+)"')
#: a failure code given as a string where a job failure is built
_FAILURE_LITERAL = re.compile(
    r'(?:JobError|Failure(?:\.of)?)\(\s*"([A-Za-z]+)"|\bcode\s*=\s*"([A-Z][A-Za-z]+)"')


def test_kinds_come_from_the_codes_and_partition_them() -> None:
    assert set(FailureCode) == CLIENT_ERROR_CODES | SYSTEM_ERROR_CODES
    assert not CLIENT_ERROR_CODES & SYSTEM_ERROR_CODES
    for code in ("ModelError", "MemoryLimit", "ProcessLimit", "CpuTimeLimit", "FileSizeLimit",
                 "TimeOut", "Crashed", "InvalidInputs", "UnsupportedModel"):
        assert FailureCode(code).kind is FailureKind.CLIENT_ERROR, code
    for code in ("WorkerLost", "WorkerError", "StorageError", "TracerError", "OOMKilled"):
        assert FailureCode(code).kind is FailureKind.SYSTEM_ERROR, code
    # one casing: PascalCase failure codes, snake_case problem codes
    assert all(re.fullmatch(r"[A-Z][A-Za-z]+", c.value) for c in FailureCode)
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", p.value) for p in ProblemCode)
    assert all(c.meaning and c.action for c in FailureCode)


def test_a_failure_takes_its_kind_from_its_code_and_refuses_another() -> None:
    failure = Failure.model_validate({"code": "ModelError", "message": "m"})
    assert failure.kind is FailureKind.CLIENT_ERROR and failure.code is FailureCode.MODEL_ERROR
    assert Failure.of(FailureCode.WORKER_LOST, "m").kind is FailureKind.SYSTEM_ERROR
    with pytest.raises(ValueError, match="ModelError is a client_error"):
        Failure(kind=FailureKind.SYSTEM_ERROR, code=FailureCode.MODEL_ERROR, message="m")
    with pytest.raises(ValueError):
        Failure.model_validate({"code": "NoSuchCode", "message": "m"})
    # codes written by older versions still read back from a job store
    old = Failure.model_validate({"kind": "client_error", "code": "OutOfMemory", "message": "m"})
    assert old.code is FailureCode.MEMORY_LIMIT
    assert Failure.model_validate_json(failure.model_dump_json()) == failure


def _source_literals(pattern: re.Pattern[str], *folders: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            for match in pattern.finditer(path.read_text()):
                code = next(g for g in match.groups() if g)
                found.setdefault(code, []).append(str(path.relative_to(ROOT)))
    return found


def test_every_problem_code_in_the_service_is_in_the_catalogue() -> None:
    used = _source_literals(_PROBLEM_LITERAL, "service/src")
    assert len(used) > 30  # the scan sees the service's codes
    unknown = {code: where for code, where in used.items()
               if code not in {p.value for p in ProblemCode}}
    assert not unknown, f"add these to kiln_client.problem_codes.ProblemCode: {unknown}"


def test_no_failure_code_is_typed_as_a_bare_string() -> None:
    used = _source_literals(_FAILURE_LITERAL, "service/src", "worker/src", "client/src")
    assert not used, f"use kiln_client.codes.FailureCode members instead: {used}"


def test_the_docs_page_is_generated_from_the_catalogues() -> None:
    text = (ROOT / "docs" / "errors.md").read_text()
    assert text == render_markdown(), (
        "docs/errors.md is stale: run `python -m kiln_service.errors_page > docs/errors.md`")
    for code in [*FailureCode, *ProblemCode]:
        assert f'<a id="{code.value}"></a>`{code.value}`' in text


async def test_problem_types_resolve_to_the_served_catalogue(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.get("/v1/jobs/" + "0" * 32), 404, "job_not_found")
    assert body["type"] == "http://kiln.test/docs/errors#job_not_found"
    page = await client.get(body["type"].split("#")[0])
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for code in [*FailureCode, *ProblemCode]:
        assert f'<tr id="{code.value}">' in page.text
    assert "TensorFlow&#x27;s whole text" in page.text or "TensorFlow's whole text" in page.text


async def test_openapi_lists_every_code(client: httpx.AsyncClient) -> None:
    doc: dict[str, Any] = (await client.get("/openapi.json")).json()
    description = doc["info"]["description"]
    for code in [*FailureCode, *ProblemCode]:
        assert f"`{code.value}`" in description, code
    failure_schema = doc["components"]["schemas"]["FailureCode"]
    assert sorted(failure_schema["enum"]) == sorted(c.value for c in FailureCode)
    assert "/docs/errors" in doc["paths"]
