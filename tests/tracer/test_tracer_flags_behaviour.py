"""Flags the tracer honours: --dynamic-batch-size, --workdir, --extract-weights, backend options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tests.tracer.conftest import max_rel_diff, mlp


def test_dynamic_batch_without_flag_when_graph_allows(rng: np.random.Generator) -> None:
    import kiln_worker

    model = mlp()
    traced = kiln_worker.trace(model, rng.normal(size=(2, 32)).astype("float32"))
    assert traced.report["dynamic_batch"] is True
    for batch in (1, 7):
        x = rng.normal(size=(batch, 32)).astype("float32")
        assert max_rel_diff(model(x), traced(x)) < 1e-5


def _batch_coupled(x):  # type: ignore[no-untyped-def]
    import tensorflow as tf

    # A reshape to the example batch's shape: compiled, the graph does not run at another batch.
    # (A graph that merely depends on the batch size, as ``x * batch`` does, runs at any batch
    # and matches the original there: the traced model takes any batch. So does this one on
    # TensorFlow's kernels, whose grappler drops the reshape; so the tests below compile it with
    # placement="all", or a measured placement that keeps it on CPU would take any batch too.)
    return tf.reshape(tf.tanh(x * 3.0), [2, 3]) * 2.0


def test_graph_that_forbids_dynamic_batch_is_fixed_without_flag(rng: np.random.Generator) -> None:
    import tensorflow as tf

    import kiln_worker

    traced = kiln_worker.trace(_batch_coupled, rng.normal(size=(2, 3)).astype("float32"),
                               placement="all")
    assert traced.report["dynamic_batch"] is False
    with pytest.raises(tf.errors.InvalidArgumentError, match="dynamic-batch-size"):
        traced(rng.normal(size=(3, 3)).astype("float32"))


def test_dynamic_batch_flag_splits_and_pads(rng: np.random.Generator) -> None:
    import kiln_worker

    x = rng.normal(size=(2, 3)).astype("float32")
    traced = kiln_worker.trace(_batch_coupled, x, flags="--dynamic-batch-size", placement="all")
    assert traced.report["dynamic_batch"] is True
    assert traced.report["batch_mode"] == "pad"
    big = rng.normal(size=(5, 3)).astype("float32")
    expected = np.tanh(big * 3.0) * 2.0  # as traced: chunks of the traced batch (2)
    assert max_rel_diff(expected, traced(big)) < 1e-5


def test_workdir_contents(tmp_path: Path, rng: np.random.Generator) -> None:
    import kiln_worker

    workdir = tmp_path / "artifacts"
    x = rng.normal(size=(1, 32)).astype("float32")
    traced = kiln_worker.trace(mlp(), x, flags=["--workdir", str(workdir)])
    for name in ("traced", "frozen", "partitioned", "final"):
        assert (workdir / "graphs" / f"{name}.pb").stat().st_size > 0
        assert (workdir / "graphs" / f"{name}.pbtxt").is_file()
    assert (workdir / "report.json").is_file()
    for entry in traced.report["subgraphs"]:
        sub = workdir / "subgraphs" / entry["name"]
        assert (sub / "graph.pb").is_file() and (sub / "compile.log").is_file()
        inputs = np.load(sub / "inputs.npz")
        assert len(inputs.files) == len(entry["inputs"])
        if entry["status"] == "compiled":
            assert "HloModule" in (sub / "hlo.txt").read_text()
            assert len(np.load(sub / "outputs.npz").files) == len(entry["outputs"])


def test_no_files_without_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kiln_worker

    monkeypatch.chdir(tmp_path)
    kiln_worker.trace(mlp(), np.ones((1, 32), "float32"))
    assert list(tmp_path.iterdir()) == []


def test_options_xla_cannot_honour_are_reported(rng: np.random.Generator) -> None:
    import kiln_worker

    with pytest.warns(UserWarning, match="neuroncore-pipeline-cores"):
        traced = kiln_worker.trace(
            mlp(),
            rng.normal(size=(1, 32)).astype("float32"),
            flags="--neuroncore-pipeline-cores=4",
        )
    assert traced.report["flags"]["neuroncore_pipeline_cores"] == 4
    assert any("neuroncore-pipeline-cores" in w for w in traced.report["warnings"])


def test_extract_weights_keeps_weights_out_of_the_graph(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    import kiln_worker

    model = mlp(width=512)
    x = rng.normal(size=(1, 32)).astype("float32")
    traced = kiln_worker.trace(model, x, flags="--extract-weights")
    assert max_rel_diff(model(x), traced(x)) < 1e-5
    assert len(traced.variables) == 6
    traced.save(str(tmp_path / "m"))
    weights_bytes = sum(int(np.prod(v.shape)) * 4 for v in model.variables)
    assert (tmp_path / "m" / "saved_model.pb").stat().st_size < weights_bytes / 4


def test_dynamic_batch_flag_keeps_a_scalar_input_whole(rng: np.random.Generator) -> None:
    """Padding and splitting cut the batched inputs only: a scalar goes whole to every chunk."""
    import tensorflow as tf

    import kiln_worker

    def scaled(x: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
        return _batch_coupled(x * scale)

    x = rng.normal(size=(2, 3)).astype("float32")
    traced = kiln_worker.trace(scaled, (x, np.float32(0.5)), flags="--dynamic-batch-size",
                               placement="all")
    assert traced.report["batch_mode"] == "pad"
    big = rng.normal(size=(5, 3)).astype("float32")
    expected = np.tanh(big * 0.5 * 3.0) * 2.0  # chunks of the traced batch (2)
    assert max_rel_diff(expected, traced((big, np.float32(0.5)))) < 1e-5
