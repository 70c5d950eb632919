"""The compiled artifact as a deployment meets it: its manifest, and every loader that serves it.

Each model is saved as a SavedModel, compiled by the compile child exactly as the worker runs it
(every supported op placed, so the artifact holds XLA-compiled calls), then:

- its ``assets.extra/kiln-manifest.json`` describes the compile and digests the files;
- ``kiln verify`` (no TensorFlow needed) and ``kiln_worker.load`` check it and flag tampering
  or a TensorFlow too old to serve it;
- it is served through each loader a deployment uses: ``tf.saved_model.load``,
  ``tf.keras.models.load_model``, the TF1 session loader that TensorFlow Serving's C++ loader
  mirrors (``tf.compat.v1.saved_model.loader.load`` + ``Session.run`` on the signature's
  tensors) and ``saved_model_cli run``; each matches the original's outputs. The loaders also
  serve a small LSTM (an RNN: a while loop over time steps), compiled once for them alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np
import pytest
from worker_helpers import child_env, run_child

from kiln_client.manifest import MANIFEST_PATH, content_digest, read_manifest

BIN = Path(sys.executable).parent
RTOL = 1e-3
#: every supported op compiled, no timing: the compile is deterministic and holds XLA calls
PLACE_ALL: dict[str, str] = {"mode": "all"}


def _build(kind: str) -> tuple[Any, np.ndarray]:
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    if kind == "mlp":
        inputs = tf.keras.Input((16,), name="features")
        x = tf.keras.layers.Dense(32, activation="relu")(inputs)
        return tf.keras.Model(inputs, tf.keras.layers.Dense(4)(x)), rng.normal(
            size=(2, 16)).astype("float32")
    if kind == "conv":
        inputs = tf.keras.Input((16, 16, 3), name="image")
        x = tf.keras.layers.Conv2D(8, 3, activation="relu")(inputs)
        x = tf.keras.layers.BatchNormalization()(x)
        x = tf.keras.layers.GlobalAveragePooling2D()(x)
        return tf.keras.Model(inputs, tf.keras.layers.Dense(5)(x)), rng.normal(
            size=(2, 16, 16, 3)).astype("float32")
    if kind == "rnn":
        inputs = tf.keras.Input((6, 4), name="sequence")
        x = tf.keras.layers.LSTM(8)(inputs)
        return tf.keras.Model(inputs, tf.keras.layers.Dense(3)(x)), rng.normal(
            size=(2, 6, 4)).astype("float32")
    raise ValueError(kind)


def _pick(outputs: Any, name: str) -> np.ndarray:
    """The named output (a model traced from a signature returns the signature's dict)."""
    return np.asarray(outputs[name] if isinstance(outputs, dict) else outputs)


def _max_rel(want: np.ndarray, got: np.ndarray) -> float:
    want64, got64 = np.asarray(want, np.float64), np.asarray(got, np.float64)
    assert want64.shape == got64.shape, (want64.shape, got64.shape)
    return float(np.max(np.abs(want64 - got64)) / max(1e-6, float(np.max(np.abs(want64)))))


#: compiled models by kind, shared by the fixtures below (each kind is compiled once)
_COMPILED: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="module", params=["mlp", "conv"])
def compiled(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, Any]:
    return _compile(request.param, tmp_path_factory)


@pytest.fixture(scope="module", params=["mlp", "conv", "rnn"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> dict[str, Any]:
    """The models every loader serves: those above and an LSTM."""
    return _compile(request.param, tmp_path_factory)


def _compile(kind: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if kind not in _COMPILED:
        _COMPILED[kind] = _compile_now(kind, tmp_path_factory.mktemp(kind))
    return _COMPILED[kind]


def _compile_now(kind: str, tmp: Path) -> dict[str, Any]:
    import tensorflow as tf

    model, x = _build(kind)
    model.save(str(tmp / "original"), save_format="tf")
    signature = tf.saved_model.load(str(tmp / "original")).signatures["serving_default"]
    (name,) = signature.structured_input_signature[1]
    (out_name,) = signature.structured_outputs
    expected = signature(**{name: tf.constant(x)})[out_name].numpy()
    np.savez(tmp / "inputs.npz", **{name: x})
    result = run_child(tmp / "run", tmp / "original", example_inputs=str(tmp / "inputs.npz"),
                       placement=PLACE_ALL, upload_digests={"model": "ab" * 32})
    assert result.returncode == 0, result.stderr[-3000:]
    return {"dir": result.out_dir / "compiled_model", "archive": result.out_dir /
            "compiled_model.tar.gz", "report": result.report, "x": x, "input": name,
            "output": out_name, "expected": expected, "tmp": tmp}


def test_manifest_describes_the_compile(compiled: dict[str, Any]) -> None:
    import tensorflow as tf

    manifest = read_manifest(compiled["dir"])
    assert manifest.content_sha256 == content_digest(compiled["dir"])
    assert manifest.versions["tensorflow"] == tf.__version__
    assert {"kiln-worker", "tf-keras", "python"} <= set(manifest.versions)
    assert manifest.placement == "all" and manifest.backend == "xla"
    assert manifest.upload_digests == {"model": "ab" * 32}
    assert list(manifest.inputs) == [compiled["input"]]
    assert manifest.inputs[compiled["input"]].dtype == "float32"
    assert list(manifest.outputs) == [compiled["output"]]
    assert manifest.serving.xla_jit is True
    assert manifest.serving.tf_serving_flags == ["--xla_cpu_compilation_enabled=true"]
    assert manifest.placement_summary["subgraphs_compiled"] >= 1
    assert compiled["report"]["manifest"]["content_sha256"] == manifest.content_sha256
    with tarfile.open(compiled["archive"]) as tar:  # the downloadable archive carries it too
        assert any(m.name.endswith(MANIFEST_PATH) for m in tar.getmembers())


def test_report_measures_speed_interleaved_at_batch_1_and_example_batch(
        compiled: dict[str, Any]) -> None:
    speed = compiled["report"]["speed"]
    assert set(speed["batches"]) == {"1", "2"}, speed
    for entry in speed["batches"].values():
        assert entry["original_ms"] > 0 and entry["compiled_ms"] > 0
        assert entry["speedup"] == pytest.approx(entry["original_ms"] / entry["compiled_ms"],
                                                 rel=1e-2)
        assert entry["repetitions"] >= 5


def _kiln_verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "kiln"), "verify", *args], capture_output=True, text=True,
                          timeout=120)


def test_kiln_verify_checks_digest_and_tensorflow(compiled: dict[str, Any], tmp_path: Path
                                                  ) -> None:
    ok = _kiln_verify(str(compiled["archive"]))
    assert ok.returncode == 0, ok.stderr
    assert "serves on TensorFlow >=" in ok.stdout and "--xla_cpu_compilation_enabled" in ok.stdout
    old = _kiln_verify(str(compiled["dir"]), "--tensorflow", "2.1.0", "--json")
    assert old.returncode == 1
    findings = json.loads(old.stdout)["findings"]
    assert any(f["severity"] == "error" and "older than" in f["message"] for f in findings)
    tampered = tmp_path / "tampered"
    shutil.copytree(compiled["dir"], tampered)
    with (tampered / "saved_model.pb").open("ab") as handle:
        handle.write(b"\0")
    bad = _kiln_verify(str(tampered))
    assert bad.returncode == 1 and "digest mismatch" in bad.stdout
    (tampered / MANIFEST_PATH).unlink()
    missing = _kiln_verify(str(tampered))
    assert missing.returncode == 2 and "Kiln" in missing.stderr


def test_kiln_worker_load_warns_only_when_it_should(compiled: dict[str, Any], tmp_path: Path
                                                    ) -> None:
    import kiln_worker

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = kiln_worker.load(compiled["dir"])
    assert not [w for w in caught if "manifest" in str(w.message) or "error:" in str(w.message)]
    got = _pick(model({compiled["input"]: compiled["x"]}), compiled["output"])
    assert _max_rel(compiled["expected"], got) < RTOL
    tampered = tmp_path / "tampered"
    shutil.copytree(compiled["dir"], tampered)
    (tampered / "fingerprint.pb").unlink(missing_ok=True)
    (tampered / "extra.txt").write_text("not from Kiln")
    with pytest.warns(UserWarning, match="digest mismatch"):
        kiln_worker.load(tampered)


def _serve_tf2(compiled: dict[str, Any]) -> np.ndarray:
    import tensorflow as tf

    serving = tf.saved_model.load(str(compiled["dir"])).signatures["serving_default"]
    return serving(**{compiled["input"]: tf.constant(compiled["x"])})[compiled["output"]].numpy()


def _serve_keras(compiled: dict[str, Any]) -> np.ndarray:
    import tensorflow as tf

    model = tf.keras.models.load_model(str(compiled["dir"]))
    return _pick(model({compiled["input"]: compiled["x"]}), compiled["output"])


def _serve_tf1_session(compiled: dict[str, Any]) -> np.ndarray:
    import tensorflow as tf

    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(compiled["dir"]))
        signature = meta.signature_def["serving_default"]
        feed = {signature.inputs[compiled["input"]].name: compiled["x"]}
        return sess.run(signature.outputs[compiled["output"]].name, feed_dict=feed)


def _serve_saved_model_cli(compiled: dict[str, Any]) -> np.ndarray:
    work = compiled["tmp"] / "cli"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    np.save(work / "x.npy", compiled["x"])
    proc = subprocess.run(
        [str(BIN / "saved_model_cli"), "run", "--dir", str(compiled["dir"]), "--tag_set", "serve",
         "--signature_def", "serving_default", "--inputs", f"{compiled['input']}={work / 'x.npy'}",
         "--outdir", str(work / "out")],
        capture_output=True, text=True, timeout=300, env=child_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.load(work / "out" / f"{compiled['output']}.npy")


@pytest.mark.parametrize("serve", [_serve_tf2, _serve_keras, _serve_tf1_session,
                                   _serve_saved_model_cli],
                         ids=["saved_model.load", "keras.load_model", "tf1-session", "saved_model_cli"])
def test_every_loader_serves_it_and_matches(served: dict[str, Any], serve: Any) -> None:
    assert _max_rel(served["expected"], serve(served)) < RTOL
