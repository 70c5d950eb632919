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
    """Automatic placement's final choice: the subgraphs' outcomes and the model that runs them."""

    results: list[SubgraphResult]
    rewritten: Rewritten
    wrapped: Wrapped


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
    frozen: FrozenGraph, backend: Any, builder: Callable[[Any], Any] | None
) -> Placement:
    """Pass ``place``: backend support ∩ the user's callback (or automatic placement's rules)."""
    return place(frozen.graph_def, node_policy(backend, frozen.graph_def.library, builder))


def partition(placement: Placement, frozen: FrozenGraph, automatic: bool) -> Partitioning:
    """Pass ``partition``: acyclic subgraphs; automatic placement drops trivial ones."""
    return partition_graph(placement, frozen.output_names, drop_trivial=automatic)


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


def keep_if_faster(
    traced: TracedFunction,
    frozen: FrozenGraph,
    flags: Any,
    compiled: Decision,
) -> Decision:
    """Automatic placement: keep the subgraphs only if the whole model is faster with them.

    Each subgraph paid off alone, but every call has a fixed cost; many small calls (e.g.
    between depthwise convolutions) can add up to a slower model than the frozen graph.
    """
    import tensorflow as tf

    from kiln_worker.tracer.compile import GAIN_THRESHOLD, speedup

    if not any(r.status == "compiled" for r in compiled.results):
        return compiled
    plain_rewritten = rewrite(frozen, [], WorkdirDumper(None))
    plain = wrap(traced, frozen, plain_rewritten, flags)
    args = [tf.constant(x) for x in traced.examples]
    gain = speedup(compiled.wrapped.model._serve, plain.model._serve, args)
    if gain * GAIN_THRESHOLD >= 1.0:
        return compiled
    reason = f"measured the whole model: {gain:.2f}x as fast with its subgraphs compiled"
    rejected = [
        replace(r, status="rejected_no_gain", reason=reason) if r.status == "compiled" else r
        for r in compiled.results
    ]
    return Decision(rejected, plain_rewritten, plain)
