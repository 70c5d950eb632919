"""Problem+json answers become typed exceptions in one place, keeping the request id."""

from __future__ import annotations

import httpx
import pytest
from client_fakes import Recorder, problem

import kiln_client
from kiln_client.errors import make_status_error

CASES = [
    (400, kiln_client.BadRequestError),
    (401, kiln_client.AuthenticationError),
    (403, kiln_client.PermissionDeniedError),
    (404, kiln_client.NotFoundError),
    (409, kiln_client.ConflictError),
    (413, kiln_client.PayloadTooLargeError),
    (422, kiln_client.ValidationError),
    (429, kiln_client.RateLimitError),
    (500, kiln_client.InternalServerError),
    (503, kiln_client.InternalServerError),
    (418, kiln_client.APIStatusError),
]


@pytest.mark.parametrize(("status", "cls"), CASES)
def test_status_maps_to_class(status: int, cls: type[kiln_client.APIStatusError]) -> None:
    response = problem(status, "some_code", "what to do", request_id=f"rid-{status}")
    response.read()
    error = make_status_error(response)
    assert type(error) is cls
    assert isinstance(error, kiln_client.KilnError)
    assert error.status_code == status
    assert error.code == "some_code"
    assert error.request_id == f"rid-{status}"
    assert "what to do" in str(error) and f"rid-{status}" in str(error)


def test_request_id_falls_back_to_header_and_non_json_body() -> None:
    response = httpx.Response(502, text="<html>bad gateway</html>", headers={"x-request-id": "hdr-1"})
    error = make_status_error(response)
    assert isinstance(error, kiln_client.InternalServerError)
    assert error.problem is None and error.code is None
    assert error.request_id == "hdr-1"
    assert "bad gateway" in str(error)


def test_validation_errors_are_listed() -> None:
    response = problem(422, "invalid_inputs", "inputs do not fit the signature",
                       errors=[{"loc": ["body", "example_inputs", "x"], "msg": "expected rank 2"}])
    error = make_status_error(response)
    assert isinstance(error, kiln_client.ValidationError)
    assert error.errors == [{"loc": ["body", "example_inputs", "x"], "msg": "expected rank 2"}]
    assert "example_inputs.x: expected rank 2" in str(error)


def test_client_raises_not_found_without_retrying() -> None:
    rec = Recorder(lambda req, i: problem(404, "job_not_found", "No job with id 'x'"))
    with pytest.raises(kiln_client.NotFoundError) as info:
        rec.client().jobs.get("x")
    assert info.value.request_id == "req-123"
    assert len(rec.requests) == 1


def test_errors_tree_roots() -> None:
    assert issubclass(kiln_client.APITimeoutError, kiln_client.APIConnectionError)
    assert issubclass(kiln_client.APITimeoutError, TimeoutError)
    assert issubclass(kiln_client.WaitTimeout, TimeoutError)
    assert issubclass(kiln_client.InputError, ValueError)
    assert kiln_client.CompileFailedError is kiln_client.JobFailed
    for name in kiln_client.__all__:
        obj = getattr(kiln_client, name)
        if isinstance(obj, type) and issubclass(obj, Exception) and obj is not kiln_client.FlagsError:
            assert issubclass(obj, kiln_client.KilnError), name
