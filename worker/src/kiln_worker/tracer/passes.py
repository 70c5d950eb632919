"""The passes of ``trace``, each a function from typed values to a typed value.

No pass reads or writes shared state: each takes what it needs and returns a new value, which
the next pass takes (as ``PassResult`` in pytorch's ``torch.fx`` pass infrastructure). The
passes' work lives in their modules (``inputs``, ``freeze``, ``placement``, ``partition``,
``compile``, ``rewrite``, ``wrap``, ``verify``); here each is given its typed signature and its
``--workdir`` dump.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from kiln_worker.tracer import freeze as freezing
from kiln_worker.tracer.baseline import against, baseline_for, flat_call
from kiln_worker.tracer.batching import batch_rows, repeat_batch
from kiln_worker.tracer.compile import SubgraphResult, compile_partitions, run_graph
from kiln_worker.tracer.freeze import FrozenGraph
from kiln_worker.tracer.inputs import TracedFunction, trace_function
from kiln_worker.tracer.measure import WHOLE_MODEL, compare
from kiln_worker.tracer.partition import Partitioning, partition_graph
from kiln_worker.tracer.placement import Placement, node_policy, place
from kiln_worker.tracer.rewrite import rewrite_graph
from kiln_worker.tracer.timing_cache import TimingCache, store_for
from kiln_worker.tracer.workdir import WorkdirDumper
from kiln_worker.tracer.wrap import Wrapped, build_dispatch, build_model

logger = logging.getLogger(__name__)
#: ``placement="measured"`` times a model that takes any batch also at this many times its
#: example batch: XLA on CPU often wins at batch 1 and loses to oneDNN at larger batches.
LARGE_BATCH_FACTOR = 8


class Rewritten(NamedTuple):
    """The ``rewrite`` pass's result: the graph with one call node per kept subgraph."""

    graph_def: Any
    output_names: list[str]


class Decision(NamedTuple):
    """The final placement: the subgraphs' outcomes, the model that runs them and, with
    ``placement="measured"``, each whole-model measurement and its decision."""

    results: list[SubgraphResult]
    rewritten: Rewritten
    wrapped: Wrapped
    whole_model: tuple[dict[str, Any], ...] = ()
    #: When each batch size chose differently: batches of up to this many rows run the example
    #: batch's choice, larger ones the larger batch's (``None``: one choice for all).
    split_rows: int | None = None


def trace_inputs(func: Any, example_inputs: Any, dump: WorkdirDumper) -> TracedFunction:
    """Pass ``inputs``: one concrete function over flat tensors."""
    traced = trace_function(func, example_inputs)
    dump.graph_def("graphs/traced", traced.concrete.graph.as_graph_def())
    return traced


def freeze_graph(traced: TracedFunction, flags: Any, dump: WorkdirDumper) -> FrozenGraph:
    """Pass ``freeze``: constants (or extracted weights) and grappler clean-up."""
    fn = freezing.extract_weights if flags.extract_weights else freezing.freeze
    frozen = fn(traced.concrete)
    dump.graph_def("graphs/frozen", frozen.graph_def)
    return frozen


def place_nodes(
    frozen: FrozenGraph, backend: Any, builder: Callable[[Any], Any] | None, mode: str
) -> Placement:
    """Pass ``place``: backend support ∩ the user's callback (or measured placement's rules)."""
    library = frozen.graph_def.library
    return place(frozen.graph_def, node_policy(backend, library, builder, mode == "measured"))


def partition(placement: Placement, frozen: FrozenGraph, mode: str) -> Partitioning:
    """Pass ``partition``: acyclic subgraphs; measured placement drops trivial ones."""
    return partition_graph(placement, frozen.output_names, drop_trivial=mode == "measured")


def compile_subgraphs(
    backend: Any,
    placement: Placement,
    frozen: FrozenGraph,
    partitioning: Partitioning,
    traced: TracedFunction,
    *,
    measure: bool,
    progress: Callable[[int, int], None],
    large_examples: list[np.ndarray] | None = None,
    timings: TimingCache | None = None,
) -> list[SubgraphResult]:
    """Pass ``compile``: each subgraph compiled now; failures (and no gain) go back to CPU."""
    return compile_partitions(
        backend,
        placement.graph,
        frozen,
        partitioning.partitions,
        examples=traced.examples,
        measure=measure,
        progress=progress,
        large_examples=large_examples,
        timings=timings,
    )


def rewrite(frozen: FrozenGraph, results: list[SubgraphResult], dump: WorkdirDumper) -> Rewritten:
    """Pass ``rewrite``: one call node per compiled subgraph."""
    kept = [r for r in results if r.status == "compiled"]
    graph_def, outputs = rewrite_graph(
        frozen.graph_def, kept, frozen.output_names, frozen.input_names + list(frozen.weights)
    )
    dump.graph_def("graphs/partitioned", graph_def)
    return Rewritten(graph_def, outputs)


def wrap(traced: TracedFunction, frozen: FrozenGraph, rewritten: Rewritten, flags: Any) -> Wrapped:
    """Pass ``wrap``: the keras.Model, with the batch behaviour the graph allows."""
    return build_model(
        traced, frozen, rewritten.graph_def, rewritten.output_names, bool(flags.dynamic_batch_size)
    )


def larger_examples(traced: TracedFunction, frozen: FrozenGraph) -> list[np.ndarray] | None:
    """The batched example inputs repeated ``LARGE_BATCH_FACTOR`` times along axis 0 (the others
    as they are), when the function was traced with a relaxed batch axis and its graph runs at
    that batch (else ``None``: the model is timed at one batch only). A signature may take any
    batch while its graph does not (a reshape to a fixed shape), so the graph is run once to
    find out."""
    if not traced.batch_relaxed:
        return None
    large = repeat_batch(traced.examples, traced.batched, LARGE_BATCH_FACTOR)
    try:
        run_graph(frozen, frozen.graph_def, frozen.output_names, large)
    except (tf.errors.OpError, ValueError) as exc:
        logger.info("measure: the graph does not run at %d rows (%s); timed at the example "
                    "batch only", _rows(traced, large), str(exc).splitlines()[0][:200])
        return None
    return large


def _rows(traced: TracedFunction, examples: list[np.ndarray]) -> int:
    """The batch size of ``examples`` (inputs shaped like the traced function's)."""
    return batch_rows(examples, traced.batched) or 1


def measure_model(
    traced: TracedFunction,
    frozen: FrozenGraph,
    flags: Any,
    compiled: Decision,
    large_examples: list[np.ndarray] | None = None,
    timings: TimingCache | None = None,
) -> Decision:
    """``placement="measured"``: at the example batch, and at the larger batch when given and
    the model takes any batch, keep the compiled subgraphs unless the whole model is clearly
    slower with them than the faster of the original and the frozen graph
    (:func:`baseline.baseline_for`); then try only the subgraphs that were faster alone; then
    none. When the two batch sizes choose differently, the model runs each choice at the batch
    sizes nearer its own (split at their geometric mean), if that pays for itself.

    Each subgraph passed on its own, but every call has a fixed cost; many small calls (e.g.
    between depthwise convolutions) can add up to a slower model than the frozen graph.
    """
    if not any(r.status == "compiled" for r in compiled.results):
        return compiled
    dynamic = compiled.wrapped.batch_mode == "dynamic"
    plain = _plain(traced, frozen, flags)
    small = _choose(traced, frozen, flags, (compiled, plain), traced.examples, large=False,
                    timings=timings)
    if large_examples is None or not dynamic:
        return small
    large = _choose(traced, frozen, flags, (compiled, plain), large_examples, large=True,
                    timings=timings)
    records = small.whole_model + large.whole_model
    if _kept(small.results) == _kept(large.results):
        return small._replace(whole_model=records)
    return _by_batch_size(traced, frozen, (small, large), records, large_examples, timings)


def _by_batch_size(
    traced: TracedFunction,
    frozen: FrozenGraph,
    choices: tuple[Decision, Decision],
    records: tuple[dict[str, Any], ...],
    large_examples: list[np.ndarray],
    timings: TimingCache | None = None,
) -> Decision:
    """The two batch sizes chose differently: a model switching between both choices by batch
    size, unless the switch is clearly slower at the example batch than the larger batch's
    choice; then that choice serves every batch size."""
    small, large = choices
    rows = (_rows(traced, traced.examples), _rows(traced, large_examples))
    split = int(math.sqrt(rows[0] * rows[1]))
    wrapped = build_dispatch(traced, frozen, (small.rewritten, large.rewritten), split)
    switch = _switch_record(traced, (small, large), wrapped, split, timings)
    records = (*records, switch)
    if switch["decision"] == "rejected":
        why = ("kept at the example batch only, where switching graphs by batch size measured "
               "clearly slower than the larger batch's choice: that one serves every batch size")
        results = [_rejected(g, why) if s.status == "compiled" and g.status != "compiled" else g
                   for s, g in zip(small.results, large.results, strict=True)]
        return large._replace(results=results, whole_model=records)
    results = [_batches(s, g, split) for s, g in zip(small.results, large.results, strict=True)]
    logger.debug("measure: dispatch at %d rows: %s", split, [r.batches for r in results])
    return Decision(results, small.rewritten, wrapped, records, split)


def _switch_record(
    traced: TracedFunction,
    choices: tuple[Decision, Decision],
    dispatch: Wrapped,
    split: int,
    timings: TimingCache | None = None,
) -> dict[str, Any]:
    """Time switching graphs by batch size against the larger batch's choice run for every
    batch size, at the example batch, where the switch costs most (a ``tf.cond``, and a
    compiled call that is no longer the whole function: tens of microseconds). The switch is
    ``kept`` unless clearly slower there, by the same rule as every candidate: when the timing
    cannot tell, each batch size keeps its own choice."""
    import tensorflow as tf

    small, large = choices
    args = [tf.constant(x) for x in traced.examples]
    graphs = [small.rewritten.graph_def, large.rewritten.graph_def]
    store = store_for(timings, "switch", graphs, args, [f"split at {split} rows"])
    timing = compare(flat_call(dispatch), flat_call(large.wrapped), args, rule=WHOLE_MODEL,
                     store=store)
    return {"candidate": "switching graphs by batch size (against the larger batch's choice "
            "at every batch size)", "batch": _rows(traced, traced.examples), **timing.as_dict(),
            "decision": "rejected" if timing.clearly_slower else "kept"}


def _kept(results: list[SubgraphResult]) -> list[str]:
    return [r.partition.name for r in results if r.status == "compiled"]


def _batches(small: SubgraphResult, large: SubgraphResult, split: int) -> SubgraphResult:
    """One subgraph's outcome when the model dispatches by batch size."""
    if small.status == "compiled" and large.status == "compiled":
        return small
    if small.status == "compiled":
        return replace(small, batches=f"<= {split}")
    if large.status == "compiled":
        return replace(large, batches=f"> {split}")
    return small


def _plain(traced: TracedFunction, frozen: FrozenGraph, flags: Any) -> Decision:
    plain_rewritten = rewrite(frozen, [], WorkdirDumper(None))
    return Decision([], plain_rewritten, wrap(traced, frozen, plain_rewritten, flags))


def _choose(
    traced: TracedFunction,
    frozen: FrozenGraph,
    flags: Any,
    models: tuple[Decision, Decision],
    examples: list[np.ndarray],
    large: bool,
    timings: TimingCache | None = None,
) -> Decision:
    """The whole-model choice at one batch size (``large``: the larger one), between
    ``models``: the model with every compiled subgraph and the one with none."""
    compiled, plain = models
    batch = "the larger batch" if large else "the example batch"
    kept = [r for r in compiled.results if r.status == "compiled" and _not_slower(r, large)]
    faster = [r for r in kept if _speedup(r, large) >= 1.0]
    candidates = [("all compiled subgraphs", kept)] if kept else []
    if faster and len(faster) < len(kept):
        candidates.append(("only the subgraphs faster alone", faster))
    args = [tf.constant(x) for x in examples]
    records: list[dict[str, Any]] = []
    baseline = (baseline_for(traced, plain.wrapped, plain.rewritten.graph_def, args, timings)
                if candidates else None)
    for label, chosen in candidates:
        assert baseline is not None
        candidate = _with_only(traced, frozen, flags, compiled, chosen, large)
        graphs = [candidate.rewritten.graph_def, baseline.graph_def]
        store = store_for(timings, "whole-model candidate", graphs, args,
                          [candidate.wrapped.batch_mode, baseline.label])
        timing = compare(flat_call(candidate.wrapped), baseline.call, args, rule=WHOLE_MODEL,
                         store=store)
        records.append({"candidate": label, "batch": _rows(traced, examples), **timing.as_dict(),
                        "decision": "rejected" if timing.clearly_slower else "kept",
                        **against(baseline)})
        if not timing.clearly_slower:
            return candidate._replace(whole_model=tuple(records))
    reason = f"not kept at {batch}: " + (
        f"the whole model measured clearly slower with its subgraphs compiled "
        f"({records[-1]['speedup']:.2f}x {records[-1]['against']})"
        if records
        else "measured clearly slower than plain TensorFlow there"
    )
    rejected = [_rejected(r, reason) if r.status == "compiled" else r for r in compiled.results]
    return Decision(rejected, plain.rewritten, plain.wrapped, tuple(records))


def _not_slower(result: SubgraphResult, large: bool) -> bool:
    timing = result.measured_at(large)
    return timing is None or not timing.clearly_slower


def _speedup(result: SubgraphResult, large: bool) -> float:
    timing = result.measured_at(large)
    return timing.speedup if timing is not None else 0.0


def _rejected(result: SubgraphResult, reason: str) -> SubgraphResult:
    return replace(result, status="rejected_no_gain", reason=reason)


def _with_only(
    traced: TracedFunction,
    frozen: FrozenGraph,
    flags: Any,
    compiled: Decision,
    chosen: list[SubgraphResult],
    large: bool,
) -> Decision:
    """The model with only ``chosen`` compiled; the other compiled subgraphs back to CPU."""
    if _kept(chosen) == _kept(compiled.results):
        return compiled  # every compiled subgraph: the model is built already
    names = set(_kept(chosen))
    kept = [
        r
        if r.partition.name in names or r.status != "compiled"
        else _rejected(r, _why_not(r, large))
        for r in compiled.results
    ]
    rewritten = rewrite(frozen, kept, WorkdirDumper(None))
    return Decision(kept, rewritten, wrap(traced, frozen, rewritten, flags))


def _why_not(result: SubgraphResult, large: bool) -> str:
    batch = "the larger batch" if large else "the example batch"
    timing = result.measured_at(large)
    if timing is not None and timing.clearly_slower:
        return (
            f"measured clearly slower than plain TensorFlow at {batch}: {timing.speedup:.2f}x, "
            f"beyond the {timing.margin:.0%} margin"
        )
    return f"not kept at {batch}: the whole model was clearly slower with it; not faster alone"


def placement_report(mode: str, decision: Decision) -> dict[str, Any]:
    """``report["placement"]``: the mode, each whole-model measurement (with the batch it ran
    at) and, when the choice depends on the batch size, the largest batch of the first choice."""
    return {
        "mode": mode,
        "whole_model": list(decision.whole_model),
        "split_rows": decision.split_rows,
    }
