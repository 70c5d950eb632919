"""Placement modes (issue 9 point 7): ``measured`` (default) and ``all``, reproducible and reported.

The seed's two examples must compile at least one subgraph in both modes, also on a loaded
machine: ``busy_cores`` runs one busy loop per core while they trace.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

MODES = ["measured", "all"]


@pytest.fixture
def busy_cores() -> Iterator[None]:
    """One busy-looping process per core for the duration of the test."""
    import tensorflow as tf  # loaded (and XLA set up) before the load starts

    tf.function(lambda x: x + 1.0, jit_compile=True)(tf.constant(1.0))
    loops = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 2)
    ]
    try:
        yield
    finally:
        for process in loops:
            process.kill()
            process.wait()


def _seed_model() -> Any:
    import tensorflow as tf

    input0 = tf.keras.layers.Input(3)
    dense0 = tf.keras.layers.Dense(3)(input0)
    return tf.keras.Model(inputs=[input0], outputs=[dense0])


def _compiled(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in report["subgraphs"] if s["status"] == "compiled"]


@pytest.mark.parametrize("mode", MODES)
def test_seed_examples_compile_in_both_modes_on_a_loaded_machine(
    mode: str, busy_cores: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tensorflow as tf

    import kiln_worker as tfn

    monkeypatch.setenv("KILN_PLACEMENT", mode)  # the seed's calls stay verbatim
    model = _seed_model()
    example_inputs = tf.random.uniform([1, 3])
    placements = []
    for _ in range(2):  # the same model places the same way twice, under load
        model_neuron = tfn.trace(model, example_inputs)  # trace
        report = model_neuron.report
        assert report["placement"]["mode"] == mode
        assert _compiled(report), report["subgraphs"]
        placements.append([(s["ops"], s["status"], s.get("batches")) for s in report["subgraphs"]])
        np.testing.assert_allclose(
            model_neuron(example_inputs).numpy(), model(example_inputs).numpy(), rtol=1e-5
        )
    assert placements[0] == placements[1]

    def subgraph_builder_function(node):  # type: ignore[no-untyped-def]
        return node.op == "MatMul"

    model_neuron = tfn.trace(
        model, example_inputs, subgraph_builder_function=subgraph_builder_function
    )
    compiled = _compiled(model_neuron.report)
    assert compiled and all(set(s["op_types"]) == {"MatMul"} for s in compiled)


def test_measured_placement_records_each_measurement_and_decision() -> None:
    import tensorflow as tf

    import kiln_worker
    from kiln_worker.tracer.measure import MAX_ROUNDS, MIN_MARGIN, ROUNDS, WHOLE_MODEL

    report = kiln_worker.trace(_seed_model(), tf.ones([1, 3]), placement="measured").report
    assert report["placement"]["mode"] == "measured"
    for entry in report["subgraphs"]:
        # Timed at the example batch and, the model taking any batch, at 8 times it.
        small, large = entry["measurement"], entry["large_batch_measurement"]
        for m in (small, large):
            assert ROUNDS <= m["rounds"] <= MAX_ROUNDS and m["calls_per_round"] >= 1
            assert m["compiled_ms"] > 0 and m["plain_ms"] > 0 and m["noise"] >= 0
            assert m["margin"] == pytest.approx(max(MIN_MARGIN, m["uncertainty"]), abs=1e-4)
        slower_at_both = small["clearly_slower"] and large["clearly_slower"]
        assert slower_at_both == (entry["status"] != "compiled")
    small_whole, large_whole = report["placement"]["whole_model"]
    assert (small_whole["batch"], large_whole["batch"]) == (1, 8)
    for whole in (small_whole, large_whole):
        assert whole["candidate"] == "all compiled subgraphs"
        assert whole["decision"] in {"kept", "rejected"} and whole["compiled_ms"] > 0
        # Timed and judged by the whole-model rule: more rounds, a closer margin.
        assert WHOLE_MODEL.rounds <= whole["rounds"] <= WHOLE_MODEL.max_rounds
        assert whole["margin"] == pytest.approx(
            max(WHOLE_MODEL.min_margin, whole["uncertainty"]), abs=1e-4)
    split = report["placement"]["split_rows"]
    assert split is None or split == 2  # each choice serves the batch sizes nearer its own


def test_whole_model_candidates_are_timed_against_the_faster_baseline() -> None:
    """Even a model that is one compiled call is timed whole, against the faster of the
    original function and the frozen graph, and the report says which."""
    import tensorflow as tf

    import kiln_worker

    report = kiln_worker.trace(_seed_model(), tf.ones([2, 3]), placement="measured").report
    (entry,) = report["subgraphs"]  # MatMul and BiasAdd: the whole model is one subgraph
    whole = report["placement"]["whole_model"]
    assert [w["batch"] for w in whole][:1] == [2]
    for record in whole:
        if record["candidate"] == "all compiled subgraphs":
            original_faster = record["frozen_vs_original"]["speedup"] < 1.0
            assert record["against"] == ("the original" if original_faster
                                         else "the frozen graph without compiled subgraphs")
            assert record["decision"] == ("rejected" if record["clearly_slower"] else "kept")
    if entry["status"] == "compiled" and not entry["measurement"]["clearly_slower"]:
        assert whole[0]["compiled_ms"] > 0 and whole[0]["plain_ms"] > 0


def test_the_baseline_is_the_faster_of_the_original_and_the_frozen_graph() -> None:
    """A whole-model candidate is timed against whichever of the user's own function (its
    variables read) and the frozen graph ran faster; against the frozen graph alone when
    TensorFlow's kernels could not run the original. Timings fixed: this checks the choice."""
    from dataclasses import replace

    import tensorflow as tf

    from kiln_client.flags import parse_flags
    from kiln_worker.tracer import baseline as baselines
    from kiln_worker.tracer import passes
    from kiln_worker.tracer.measure import Measurement
    from kiln_worker.tracer.workdir import WorkdirDumper

    flags, dump = parse_flags(""), WorkdirDumper(None)
    traced = passes.trace_inputs(_seed_model(), np.ones((2, 3), np.float32), dump)
    plain = passes._plain(traced, passes.freeze_graph(traced, flags, dump), flags)
    x = [tf.ones([2, 3])]
    frozen_model = (plain.wrapped, plain.rewritten.graph_def)
    frozen_call = plain.wrapped.model._serve
    np.testing.assert_allclose(traced.concrete(*x)[0], frozen_call(*x)[0], rtol=1e-6)
    for frozen_seconds, label in [(2.0, "the original"), (1.0, "the frozen graph")]:
        timed = Measurement((frozen_seconds,) * 7, (1.5,) * 7, 1)  # frozen graph, original
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(baselines, "compare", lambda *_, t=timed, **__: t)
            baseline = baselines.baseline_for(traced, *frozen_model, x)
        assert baseline.label.startswith(label) and baseline.frozen_vs_original == timed
        expected = traced.concrete if label == "the original" else frozen_call.get_concrete_function()
        assert baseline.call.name == expected.name  # a concrete function, as the original is
        if label == "the original":  # not frozen: the user's variables are read
            assert "ReadVariableOp" in {n.op for n in baseline.graph_def.node}
    stand_in = baselines.baseline_for(replace(traced, reference_source="xla"), *frozen_model, x)
    assert stand_in.call.name == frozen_call.get_concrete_function().name
    assert stand_in.frozen_vs_original is None

    @tf.function
    def only_at_batch_99(x: tf.Tensor) -> tf.Tensor:  # an original that fails on these inputs
        tf.debugging.assert_equal(tf.shape(x)[0], 99, message="not batch 99")
        return x

    failing = only_at_batch_99.get_concrete_function(tf.TensorSpec([None, 3]))
    fallback = baselines.baseline_for(replace(traced, concrete=failing), *frozen_model, x)
    assert fallback.label.startswith("the frozen graph") and fallback.frozen_vs_original is None


def test_all_mode_compiles_every_supported_op_without_timing(rng: np.random.Generator) -> None:
    import tensorflow as tf

    import kiln_worker

    inputs = tf.keras.Input((8, 8, 4))
    x = tf.keras.layers.DepthwiseConv2D(3, padding="same")(inputs)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(2)(x))
    example = rng.normal(size=(1, 8, 8, 4)).astype("float32")
    report = kiln_worker.trace(model, example, placement="all").report
    compiled_ops = {op for s in _compiled(report) for op in s["op_types"]}
    assert "DepthwiseConv2dNative" in compiled_ops  # measured placement keeps it on CPU
    assert all("measurement" not in s for s in report["subgraphs"])
    assert report["placement"] == {"mode": "all", "whole_model": [], "split_rows": None}
    assert report["on_neuron_ratio"] == 1.0


def test_unknown_placement_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import tensorflow as tf

    import kiln_worker
    from kiln_worker.tracer.errors import TraceInputError

    with pytest.raises(TraceInputError, match="measured, all"):
        kiln_worker.trace(_seed_model(), tf.ones([1, 3]), placement="fastest")
    monkeypatch.setenv("KILN_PLACEMENT", "everything")
    with pytest.raises(TraceInputError, match="KILN_PLACEMENT"):
        kiln_worker.trace(_seed_model(), tf.ones([1, 3]))


@pytest.mark.parametrize(
    ("compiled", "plain", "slower"),
    [
        ((1.30, 1.31, 1.32, 1.30, 1.33), (1.00, 1.01, 1.00, 1.02, 1.01), True),  # 30% > 5%
        ((1.08, 1.09, 1.08, 1.10, 1.09), (1.00, 1.01, 1.00, 1.02, 1.01), True),  # 8% > 5%
        ((1.03, 1.04, 1.03, 1.05, 1.04), (1.00, 1.01, 1.00, 1.02, 1.01), False),  # within 5%
        ((1.30, 1.31, 1.32, 1.30, 1.33), (1.00, 1.60, 1.50, 1.70, 1.01), False),  # noise 50%
        # A machine twice as slow in some rounds: each round's pair shares it, so the 30%
        # still shows (comparing each side's best round and spread called that noise).
        ((1.30, 2.62, 2.64, 2.60, 1.33), (1.00, 2.01, 2.02, 2.02, 1.01), True),
        ((0.50, 0.52, 0.51, 0.50, 0.55), (1.00, 1.01, 1.00, 1.02, 1.01), False),  # faster
    ],
)
def test_clearly_slower_means_beyond_the_margin_and_the_noise(
    compiled: tuple[float, ...], plain: tuple[float, ...], slower: bool
) -> None:
    from kiln_worker.tracer.measure import MIN_MARGIN, Measurement

    m = Measurement(compiled, plain, 3)
    assert m.clearly_slower is slower
    assert m.margin >= MIN_MARGIN
    ratios = sorted(c / p for c, p in zip(compiled, plain, strict=True))
    assert m.speedup == pytest.approx(1 / ratios[len(ratios) // 2])  # the median round's


def test_more_rounds_shrink_the_uncertainty_not_the_noise() -> None:
    from kiln_worker.tracer.measure import ROUNDS, Measurement

    ratios = [0.7, 0.9, 1.05, 1.2, 1.35, 1.5, 1.7]  # 25% noise around a 1.2 median
    few = Measurement(tuple(ratios), (1.0,) * len(ratios), 1)
    many = Measurement(tuple(ratios * 3), (1.0,) * (3 * len(ratios)), 1)
    assert len(ratios) == ROUNDS
    assert few.uncertainty == pytest.approx(few.noise)
    assert many.noise == pytest.approx(few.noise)
    assert many.uncertainty == pytest.approx(few.uncertainty / 3**0.5)
    # 20% slower at the median: within 7 rounds' noise (kept, undecided), beyond the
    # uncertainty of 21 rounds.
    assert few.undecided and not few.clearly_slower
    assert many.clearly_slower


class _Sleeper:
    """A callable that sleeps ``seconds`` per call (a version of known speed)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self) -> None:
        time.sleep(self.seconds)


@pytest.mark.parametrize(("compiled_ms", "slower"), [(2.0, False), (6.0, True), (4.0, False)])
def test_compare_runs_more_rounds_only_while_undecided(compiled_ms: float, slower: bool) -> None:
    from kiln_worker.tracer.measure import MAX_ROUNDS, ROUNDS, Rule, compare

    m = compare(_Sleeper(compiled_ms / 1e3), _Sleeper(0.004), [], Rule(block_seconds=0.004))
    rounds = len(m.compiled_seconds)
    assert ROUNDS <= rounds <= MAX_ROUNDS and (rounds - ROUNDS) % 2 == 0
    assert m.clearly_slower is slower  # 2x faster and as fast are kept, 1.5x slower is not
    assert not m.undecided or rounds == MAX_ROUNDS  # it stopped because it was decided


def test_a_whole_model_is_judged_closer_than_a_subgraph() -> None:
    """3.5% slower every round: within a subgraph's 5% margin (kept), beyond a whole model's
    2% (rejected: what a whole-model choice keeps is what serves)."""
    from kiln_worker.tracer.measure import SUBGRAPH, WHOLE_MODEL, Measurement

    rounds = WHOLE_MODEL.rounds
    compiled, plain = (1.035,) * rounds, (1.0,) * rounds
    assert not Measurement(compiled, plain, 1, SUBGRAPH.min_margin).clearly_slower
    assert Measurement(compiled, plain, 1, WHOLE_MODEL.min_margin).clearly_slower


def test_compare_warms_both_sides_up_for_the_rule_s_time() -> None:
    from kiln_worker.tracer.measure import Rule, compare

    calls = {"compiled": 0, "plain": 0}

    def counting(side: str) -> Any:
        def call() -> None:
            calls[side] += 1
            time.sleep(0.002)
        return call

    rule = Rule(rounds=3, max_rounds=3, block_seconds=0.002, warm_seconds=0.05)
    m = compare(counting("compiled"), counting("plain"), [], rule)
    timed = len(m.compiled_seconds) * m.calls_per_round
    # 2 first calls, then calls of 2 ms for 50 ms (up to 25; fewer when sleeps run long), 3 to
    # calibrate the plain side, one untimed call per block (3): without the warm-up, at most
    # 8 calls beyond the timed ones.
    assert calls["compiled"] >= 2 + 12 + timed
    assert calls["plain"] >= 2 + 12 + 3 + timed
