"""Which compile() calls ask the cache with the model's digest first, and what they send."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest

from kiln_client._digest_first import digest_request
from kiln_client.digest import model_digest

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
