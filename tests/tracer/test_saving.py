"""The returned model (seed point 6): save, reload with both loaders, stay XLA-compiled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.tracer.conftest import max_rel_diff, mlp


def _xla_marked_calls(saved_model_dir: Path) -> list[str]:
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((saved_model_dir / "saved_model.pb").read_bytes())
    graph = proto.meta_graphs[0].graph_def
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    return [
        n.name
        for n in nodes
        if "kiln_subgraph_" in n.name
        and "_XlaMustCompile" in n.attr
        and n.attr["_XlaMustCompile"].b
    ]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import tensorflow as tf

    import kiln_worker

    model = mlp()
    x = np.random.default_rng(1).normal(size=(1, 32)).astype("float32")
    traced = kiln_worker.trace(model, x, subgraph_builder_function=lambda n: True)
    directory = tmp_path_factory.mktemp("saved") / "traced"
    traced.save(str(directory))
    return {"model": model, "traced": traced, "x": x, "dir": directory, "tf": tf}


def test_saved_model_has_serving_default_and_xla_marks(saved: dict[str, Any]) -> None:
    tf = saved["tf"]
    assert _xla_marked_calls(saved["dir"]), "no _XlaMustCompile call node in saved_model.pb"
    loaded = tf.saved_model.load(str(saved["dir"]))
    assert "serving_default" in loaded.signatures
    out = loaded.signatures["serving_default"](tf.constant(saved["x"]))
    assert max_rel_diff(saved["model"](saved["x"]), next(iter(out.values()))) < 1e-5


def test_reload_with_keras_and_run_at_other_batch(saved: dict[str, Any]) -> None:
    tf = saved["tf"]
    reloaded = tf.keras.models.load_model(str(saved["dir"]))
    batch = np.random.default_rng(2).normal(size=(5, 32)).astype("float32")
    assert max_rel_diff(saved["model"](batch), reloaded(batch)) < 1e-5


def test_report_survives_save(saved: dict[str, Any]) -> None:
    tf = saved["tf"]
    loaded = tf.saved_model.load(str(saved["dir"]))
    report = json.loads(loaded.kiln_report().numpy().decode())
    in_memory = saved["traced"].report
    assert in_memory["timings"]["trace_seconds"] > 0 and in_memory["subgraphs"][0]["compile_seconds"]
    # Saved without the run's seconds (the same trace saves the same bytes), all else equal.
    assert "timings" not in report and "compile_seconds" not in report["subgraphs"][0]
    in_memory.pop("timings")
    in_memory["subgraphs"] = [
        {k: v for k, v in s.items() if k != "compile_seconds"} for s in in_memory["subgraphs"]
    ]
    assert report == in_memory
    json.dumps(saved["traced"].report)  # JSON-serialisable
    assert saved["traced"].on_neuron_ratio == report["on_neuron_ratio"] == 1.0


def test_traced_model_holds_no_variables(saved: dict[str, Any]) -> None:
    assert saved["traced"].variables == []
    assert not (saved["dir"] / "variables" / "variables.data-00000-of-00001").exists() or (
        (saved["dir"] / "variables" / "variables.data-00000-of-00001").stat().st_size < 1024
    )


_TRACE_AND_SAVE = """
import sys
import numpy as np
import tensorflow as tf
import kiln_worker
tf.keras.utils.set_random_seed(0)
model = tf.keras.Sequential([tf.keras.Input((8,)), tf.keras.layers.Dense(16, activation="relu"),
                             tf.keras.layers.Dense(4)])
kiln_worker.trace(model, np.ones((1, 8), np.float32), placement="all").save(sys.argv[1])
"""


def test_the_same_trace_saves_the_same_bytes(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    saved = []
    for run in ("first", "second"):  # fresh processes: nothing shared but the inputs
        out = tmp_path / run
        subprocess.run([sys.executable, "-c", _TRACE_AND_SAVE, str(out)], env=env, check=True,
                       timeout=300)
        saved.append({p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()})
    assert saved[0].keys() == saved[1].keys() and Path("saved_model.pb") in saved[0]
    differing = [str(p) for p in saved[0] if saved[0][p] != saved[1][p]]
    assert differing == ["fingerprint.pb"]  # TensorFlow writes a random uuid into it ...
    assert _fingerprint(saved[0]) == _fingerprint(saved[1])  # ... and hashes that agree


#: Measured placement, with a graph that XLA splits in two around a string op (so whole-model
#: candidates are timed too); prints what the report says about placement and the cache.
_TRACE_MEASURED_AND_SAVE = """
import json
import sys
import numpy as np
import tensorflow as tf
import kiln_worker
tf.keras.utils.set_random_seed(0)
inputs = tf.keras.Input((8,))
x = tf.keras.layers.Dense(16, activation="relu")(inputs)
x = tf.keras.layers.Lambda(lambda t: tf.strings.to_number(tf.strings.as_string(t)))(x)
model = tf.keras.Model(inputs, tf.keras.layers.Dense(4)(x))
traced = kiln_worker.trace(model, np.ones((1, 8), np.float32), placement="measured")
traced.save(sys.argv[1])
report = traced.report
print(json.dumps({"placement": report["placement"], "subgraphs": report["subgraphs"]}))
"""


def test_the_same_measured_trace_saves_the_same_bytes_with_a_timing_cache(tmp_path: Path) -> None:
    """Measured placement times on a noisy machine; with a shared timing cache, the second
    trace (in a fresh process) reuses the first one's measurements: the same placement, and
    the same saved bytes although one trace timed and the other did not."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2",
               KILN_TIMING_CACHE=str(tmp_path / "cache"))
    saved, reports = [], []
    for run in ("first", "second"):
        out = tmp_path / run
        done = subprocess.run([sys.executable, "-c", _TRACE_MEASURED_AND_SAVE, str(out)], env=env,
                              check=True, timeout=600, capture_output=True, text=True)
        reports.append(json.loads(done.stdout.strip().splitlines()[-1]))
        saved.append({p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()})
    first, second = (r["placement"].pop("timing_cache") for r in reports)
    assert first["hits"] == 0 and first["stored"] >= 4  # two subgraphs at two batches, and more
    assert second == {**first, "hits": first["stored"], "stored": 0}
    assert len(reports[0]["placement"]["whole_model"]) >= 1  # whole-model candidates were timed
    for report in reports:
        for subgraph in report["subgraphs"]:
            subgraph.pop("compile_seconds")
    measurements = [*reports[1]["placement"]["whole_model"],
                    *(s[k] for s in reports[1]["subgraphs"]
                      for k in ("measurement", "large_batch_measurement"))]
    assert all("cached_at" in m for m in measurements)  # each from the cache
    from kiln_worker.tracer.report import without_timings

    # The same placement, from the same measurements (cached_at: also in nested baselines).
    assert reports[0] == without_timings(reports[1])
    differing = [str(p) for p in saved[0] if saved[0][p] != saved[1][p]]
    assert saved[0].keys() == saved[1].keys() and differing == ["fingerprint.pb"]
    assert _fingerprint(saved[0]) == _fingerprint(saved[1])


def _fingerprint(files: dict[Path, bytes]) -> Any:
    from tensorflow.core.protobuf import fingerprint_pb2

    fingerprint = fingerprint_pb2.FingerprintDef.FromString(files[Path("fingerprint.pb")])
    fingerprint.ClearField("uuid")
    return fingerprint
