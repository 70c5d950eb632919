"""The passes of ``trace``, each a function from typed values to a typed value.

No pass reads or writes shared state: each takes what it needs and returns a new value, which
the next pass takes (as ``PassResult`` in pytorch's ``torch.fx`` pass infrastructure). The
passes' work lives in their modules (``inputs``, ``freeze``, ``placement``, ``partition``,
``compile``, ``rewrite``, ``wrap``, ``verify``); here each is given its typed signature and its
``--workdir`` dump.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any, NamedTuple

from kiln_worker.tracer import freeze as freezing
from kiln_worker.tracer.compile import SubgraphResult, compile_partitions
from kiln_worker.tracer.freeze import FrozenGraph
from kiln_worker.tracer.inputs import TracedFunction, trace_function
from kiln_worker.tracer.measure import compare
from kiln_worker.tracer.partition import Partitioning, partition_graph
from kiln_worker.tracer.placement import Placement, node_policy, place
from kiln_worker.tracer.rewrite import rewrite_graph
from kiln_worker.tracer.workdir import WorkdirDumper
from kiln_worker.tracer.wrap import Wrapped, build_model

logger = logging.getLogger(__name__)


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


def measure_model(
    traced: TracedFunction, frozen: FrozenGraph, flags: Any, compiled: Decision
) -> Decision:
    """``placement="measured"``: keep the compiled subgraphs unless the whole model is clearly
    slower with them than plain TensorFlow; then try only the subgraphs that were faster alone;
    then none.

    Each subgraph passed on its own, but every call has a fixed cost; many small calls (e.g.
    between depthwise convolutions) can add up to a slower model than the frozen graph.
    """
    import tensorflow as tf

    kept = [r for r in compiled.results if r.status == "compiled"]
    if not kept:
        return compiled
    plain_rewritten = rewrite(frozen, [], WorkdirDumper(None))
    plain = wrap(traced, frozen, plain_rewritten, flags)
    args = [tf.constant(x) for x in traced.examples]
    faster = [r for r in kept if r.measurement is not None and r.measurement.speedup >= 1.0]
    candidates = [("all compiled subgraphs", compiled)]
    if faster and len(faster) < len(kept):
        label = "only the subgraphs faster alone"
        candidates.append((label, _with_only(traced, frozen, flags, compiled.results, faster)))
    records: list[dict[str, Any]] = []
    for label, candidate in candidates:
        timing = compare(candidate.wrapped.model._serve, plain.model._serve, args)
        verdict = "rejected" if timing.clearly_slower else "kept"
        records.append({"candidate": label, **timing.as_dict(), "decision": verdict})
        if not timing.clearly_slower:
            return candidate._replace(whole_model=tuple(records))
    reason = (
        f"the whole model measured clearly slower with its subgraphs compiled "
        f"({records[-1]['speedup']:.2f}x plain TensorFlow)"
    )
    rejected = [_rejected(r, reason) if r.status == "compiled" else r for r in compiled.results]
    return Decision(rejected, plain_rewritten, plain, tuple(records))


def _rejected(result: SubgraphResult, reason: str) -> SubgraphResult:
    return replace(result, status="rejected_no_gain", reason=reason)


def _with_only(
    traced: TracedFunction,
    frozen: FrozenGraph,
    flags: Any,
    results: list[SubgraphResult],
    faster: list[SubgraphResult],
) -> Decision:
    """The model with only ``faster`` compiled; the other compiled subgraphs back to CPU."""
    reason = "the whole model was clearly slower with it; it was not faster alone"
    names = {r.partition.name for r in faster}
    chosen = [
        r if r.partition.name in names or r.status != "compiled" else _rejected(r, reason)
        for r in results
    ]
    rewritten = rewrite(frozen, chosen, WorkdirDumper(None))
    return Decision(chosen, rewritten, wrap(traced, frozen, rewritten, flags))
