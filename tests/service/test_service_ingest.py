"""The SavedModel decoder agrees with TensorFlow, and the API never imports TensorFlow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from service_helpers import make_tar

from kiln_service._savedmodel_proto import ProtoDecodeError, parse_saved_model
from kiln_service.ingest import inspect_archive, read_signatures


@pytest.mark.parametrize("model", ["two_inputs", "keras_dense"])
def test_decoder_matches_tensorflow(model: str, models_dir: Path, tf_signatures: dict[str, Any]) -> None:
    metas = parse_saved_model((models_dir / model / "saved_model.pb").read_bytes())
    serving = next(m for m in metas if "serve" in m.tags)
    ours = {
        name: {key: [spec.dtype, None if spec.shape is None else list(spec.shape)]
               for key, spec in sig.inputs.items()}
        for name, sig in serving.signatures.items() if not name.startswith("__")
    }
    assert ours == tf_signatures[model]


def test_read_signatures_from_an_archive(models_dir: Path, tmp_path: Path) -> None:
    archive = make_tar(models_dir / "two_inputs", tmp_path / "m.tgz", folder="exported")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    info = inspect_archive(archive, max_members=100, max_total_bytes=10**9, scratch=scratch)
    assert info.kind == "tar" and info.root == "exported"
    sigs = read_signatures(info)
    assert sorted(sigs) == ["other", "serving_default"]
    assert sigs["serving_default"].inputs["x"].name == "serving_default_x:0"


def test_decoder_rejects_garbage() -> None:
    with pytest.raises(ProtoDecodeError):
        parse_saved_model(b"\x12\xff\xff\xff\xff\x0f")
    with pytest.raises(ProtoDecodeError):
        parse_saved_model(b"")


def test_importing_the_api_does_not_load_tensorflow(tmp_path: Path) -> None:
    code = ("import sys, kiln_service.main, kiln_service.ingest, kiln_service.cli;"
            "from kiln_service.config import Settings; kiln_service.main.create_app(Settings());"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow'))")
    env = {**os.environ, "KILN_DATA_DIR": str(tmp_path / "kiln")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_saved_model_without_signatures_is_refused_with_how_to_export_one() -> None:
    from kiln_service.errors import UploadRejectedError
    from kiln_service.ingest import select_signature

    with pytest.raises(UploadRejectedError) as raised:
        select_signature({}, "serving_default")
    assert raised.value.code == "unknown_signature"
    assert "has no signatures" in str(raised.value) and "get_concrete_function" in str(raised.value)
