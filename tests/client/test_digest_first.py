"""Which compile() calls ask the cache with the model's digest first, and what they send."""

from __future__ import annotations

import tarfile
from pathlib import Path

import httpx
import numpy as np
import pytest

from kiln_client._digest_first import digest_request, upload_required
from kiln_client.digest import model_digest
from kiln_client.errors import make_status_error

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "examples" / "mlp" / "mlp.tar.gz"
FORM = {"flags": "", "target": "xla", "signature": "serving_default"}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    with tarfile.open(MODEL) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    return next((tmp_path / "unpacked").rglob("saved_model.pb")).parent


def test_a_model_on_disk_is_asked_for_by_its_digest_with_the_other_parts(
        folder: Path, tmp_path: Path) -> None:
    inputs = {"x": np.zeros((1, 4), np.float32)}
    ask = digest_request(folder, inputs, FORM, signature="serving_default", workdir=tmp_path)
    assert ask is not None and ask.example_inputs is not None
    assert ask.form == {**FORM, "model_digest": model_digest(MODEL)}  # folder = its archive
    assert set(ask.files) == {"example_inputs"}
    assert ask.files["example_inputs"][1] == ask.example_inputs.read_bytes()
    without_inputs = digest_request(MODEL, None, FORM, signature="serving_default",
                                    workdir=tmp_path)
    assert without_inputs is not None and without_inputs.files == {}


@pytest.mark.parametrize("extra", [{"cache": "false"}, {"output_location": "s3://b/p"},
                                   {"mlflow_register": "m"}])
def test_no_digest_request_when_it_could_only_miss(folder: Path, tmp_path: Path,
                                                   extra: dict[str, str]) -> None:
    assert digest_request(folder, None, {**FORM, **extra}, signature="serving_default",
                          workdir=tmp_path) is None


def test_no_digest_request_for_what_is_not_a_model_on_disk(tmp_path: Path) -> None:
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"not an archive")
    for model in (None, object(), tmp_path / "missing", broken):
        assert digest_request(model, None, FORM, signature="serving_default",
                              workdir=tmp_path) is None


@pytest.mark.parametrize(("status", "problem", "send_the_model"), [
    (409, {"code": "upload_required", "detail": "no outcome for this model_digest"}, True),
    (422, {"code": "unknown_field", "detail": "unknown form field 'model_digest'; known: …"}, True),
    (409, {"code": "idempotency_key_in_flight", "detail": "retry"}, False),
    (422, {"code": "unknown_field", "detail": "unknown form field 'colour'"}, False),
    (422, {"code": "invalid_flags", "detail": "model_digest"}, False),
])
def test_what_sends_the_model_after_a_digest_only_request(
        status: int, problem: dict[str, str], send_the_model: bool) -> None:
    # A miss, or a Kiln older than model_digest, means "upload"; any other error is the answer.
    request = httpx.Request("POST", "http://kiln.test/v1/compile")
    response = httpx.Response(status, json={"status": status, **problem}, request=request,
                              headers={"content-type": "application/problem+json"})
    assert upload_required(make_status_error(response)) is send_the_model
