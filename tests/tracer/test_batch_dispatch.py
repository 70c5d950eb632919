"""``placement="measured"`` at two batch sizes: a model whose compiled subgraphs win at the
example batch and lose at the larger one runs each choice at the batch sizes nearer its own.

The per-subgraph and whole-model timings are fixed here (``Measurement`` values), so that the
test checks the decision and the dispatching model, not this machine's speed.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.tracer.conftest import max_rel_diff, mlp


def _decide(rng: np.random.Generator, switch_pays: bool) -> tuple[Any, Any]:
    """The MLP's measured placement with fixed timings: its one subgraph twice as fast as
    plain TensorFlow at the example batch and twice as slow at 8 times it; every whole-model
    candidate twice as fast, but switching graphs by batch size twice as slow as the larger
    batch's choice at the example batch unless ``switch_pays``."""
    from kiln_client.flags import parse_flags
    from kiln_worker.tracer import baseline, passes
    from kiln_worker.tracer.backends.xla import XlaBackend
    from kiln_worker.tracer.measure import Measurement
    from kiln_worker.tracer.workdir import WorkdirDumper

    faster = Measurement((1.0,) * 7, (2.0,) * 7, 1)  # compiled twice as fast, no noise
    slower = Measurement((2.0,) * 7, (1.0,) * 7, 1)
    model, flags, dump = mlp(), parse_flags(""), WorkdirDumper(None)
    traced = passes.trace_inputs(model, rng.normal(size=(1, 32)).astype("float32"), dump)
    frozen = passes.freeze_graph(traced, flags, dump)
    placed = passes.place_nodes(frozen, XlaBackend(), None, "measured")
    parts = passes.partition(placed, frozen, "measured")
    results = passes.compile_subgraphs(
        XlaBackend(), placed, frozen, parts, traced, measure=False, progress=lambda i, n: None
    )
    assert [r.status for r in results] == ["compiled"]
    results = [replace(r, measurement=faster, large_measurement=slower) for r in results]
    rewritten = passes.rewrite(frozen, results, dump)
    compiled = passes.Decision(results, rewritten, passes.wrap(traced, frozen, rewritten, flags))
    larger = passes.larger_examples(traced, frozen)
    assert larger is not None and larger[0].shape == (8, 32)

    def timing(first: Any, second: Any, args: list[Any], **_: Any) -> Measurement:
        # Only the check of the switch times a switching model (as ``compiled``).
        ops = {op.type for op in first.graph.get_operations()}  # a concrete function
        switching = bool({"If", "StatelessIf"} & ops)
        return slower if switching and not switch_pays else faster

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(passes, "compare", timing)
        patch.setattr(baseline, "compare", timing)
        decision = passes.measure_model(traced, frozen, flags, compiled, larger)
    return model, decision


def test_each_batch_size_runs_its_own_choice(rng: np.random.Generator, tmp_path: Path) -> None:
    import tensorflow as tf

    from kiln_worker.tracer import passes

    model, decision = _decide(rng, switch_pays=True)
    assert decision.split_rows == 2  # between batch 1 and batch 8
    assert [(r.status, r.batches) for r in decision.results] == [("compiled", "<= 2")]
    placement = passes.placement_report("measured", decision)
    # Timed whole: at batch 1 (nothing compiled is left at 8), then the switch at batch 1.
    assert [w["batch"] for w in placement["whole_model"]] == [1, 1]
    assert placement["whole_model"][-1]["decision"] == "kept"  # the switch
    assert placement["split_rows"] == 2
    traced_model = decision.wrapped.model
    ops = {n.op for n in traced_model._serve.get_concrete_function().graph.as_graph_def().node}
    assert ops & {"If", "StatelessIf"}, ops
    batches = [rng.normal(size=(rows, 32)).astype("float32") for rows in (1, 2, 3, 8)]
    for x in batches:
        assert max_rel_diff(model(x), traced_model(x)) < 1e-5
    traced_model.save(str(tmp_path / "model"))
    serve = tf.saved_model.load(str(tmp_path / "model")).signatures["serving_default"]
    for x in batches:  # after save and reload, both branches still answer
        (out,) = serve(tf.constant(x)).values()
        assert max_rel_diff(model(x), out) < 1e-5


def test_a_switch_clearly_slower_at_the_example_batch_is_left_out(rng: np.random.Generator) -> None:
    from kiln_worker.tracer import passes

    model, decision = _decide(rng, switch_pays=False)
    assert decision.split_rows is None  # one graph: the larger batch's choice (plain TF)
    assert [r.status for r in decision.results] == ["rejected_no_gain"]
    assert "switching graphs by batch size" in str(decision.results[0].reason)
    placement = passes.placement_report("measured", decision)
    assert placement["whole_model"][-1]["decision"] == "rejected"
    assert placement["whole_model"][-1]["candidate"].startswith("switching graphs by batch size")
    serve = decision.wrapped.model._serve.get_concrete_function()
    assert not {"If", "StatelessIf"} & {op.type for op in serve.graph.get_operations()}
    for rows in (1, 8):
        x = rng.normal(size=(rows, 32)).astype("float32")
        assert max_rel_diff(model(x), decision.wrapped.model(x)) < 1e-5


def test_a_graph_fixed_to_its_batch_is_timed_at_that_batch_only(rng: np.random.Generator) -> None:
    """A signature that takes any batch over a graph that does not (a reshape to a fixed
    shape, as hand-written encoders have): measured placement times the example batch only."""
    import tensorflow as tf

    import kiln_worker
    from kiln_client.flags import parse_flags
    from kiln_worker.tracer import passes
    from kiln_worker.tracer.workdir import WorkdirDumper

    @tf.function
    def fixed(x: tf.Tensor) -> tf.Tensor:
        return tf.nn.relu(tf.reshape(x, [4, 8]) @ tf.ones([8, 3]))

    example = rng.normal(size=(1, 4, 8)).astype("float32")
    dump = WorkdirDumper(None)
    traced = passes.trace_inputs(fixed, example, dump)
    frozen = passes.freeze_graph(traced, parse_flags(""), dump)
    assert traced.batch_relaxed and passes.larger_examples(traced, frozen) is None
    model = kiln_worker.trace(fixed, example, placement="measured")
    assert max_rel_diff(fixed(example).numpy(), model(example).numpy()) < 1e-5
