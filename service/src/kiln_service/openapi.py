"""The OpenAPI document: every operation also declares its errors as RFC 9457 problems.

The routes return their success bodies through FastAPI's response models; every error goes
through one exception handler as ``application/problem+json``. This adds that fact to the
published document once, as each operation's ``default`` response, so that clients and
contract tests (schemathesis) see the real shape of any 4xx or 5xx answer.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from kiln_client.codes import FailureCode
from kiln_client.models import Problem
from kiln_client.problem_codes import ProblemCode
from kiln_service.errors import ERRORS_PATH

__all__ = ["error_codes_description", "install_openapi"]

_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_DEFAULT_RESPONSE = {
    "description": "An error, as an RFC 9457 problem document with a machine `code` and a "
    "`detail` saying what to do (4xx: fix the request; 503: retry after `Retry-After`).",
    "content": {"application/problem+json": {"schema": _PROBLEM_REF}},
}


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` declare problem+json errors on every operation."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version,
                             description=f"{app.description}\n\n{error_codes_description()}",
                             routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                if isinstance(operation, dict) and "responses" in operation:
                    _declare_problems(operation["responses"])
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _declare_problems(responses: dict[str, Any]) -> None:
    """Route every undeclared status to the problem response; fix FastAPI's 422 entry."""
    responses.setdefault("default", _DEFAULT_RESPONSE)
    if "422" in responses:
        # FastAPI documents its own validation body; ours is a problem document.
        responses["422"] = {**_DEFAULT_RESPONSE, "description": "The request is not valid."}


def error_codes_description() -> str:
    """The closed catalogues of codes, as Markdown for the document's ``info.description``."""
    failures = "\n".join(f"- `{c.value}` ({c.kind.value}): {c.meaning}" for c in FailureCode)
    problems = "\n".join(f"- `{p.value}` ({p.status}): {p.help}" for p in ProblemCode)
    return (
        f"## Errors\n\nEvery error is an RFC 9457 problem whose `type` is "
        f"`<server>{ERRORS_PATH}#<code>`, its entry on the catalogue page served at "
        f"`GET {ERRORS_PATH}`.\n\n### Job failure codes (`Job.failure.code`)\n\n{failures}"
        f"\n\n### API problem codes (a problem's `code`)\n\n{problems}\n"
    )
