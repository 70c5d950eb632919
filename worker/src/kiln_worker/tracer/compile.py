"""Pass ``compile``: each partition becomes a function, compiled now by the backend.

A partition the backend rejects goes back to CPU (``fallback_cpu``) with the reason; with
``placement="measured"``, a partition that compiles but runs clearly slower than plain TensorFlow
on the example inputs also goes back (``rejected_no_gain``; see ``measure.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2

from kiln_worker.tracer.backends.base import Backend, CompiledSubgraph
from kiln_worker.tracer.freeze import FrozenGraph
from kiln_worker.tracer.graphs import (
    GraphImporter,
    NodeGraph,
    tensor_specs,
    with_lowering,
    without_feeds,
)
from kiln_worker.tracer.measure import Measurement, TimingStore, compare
from kiln_worker.tracer.partition import Partition
from kiln_worker.tracer.reference import call_with_xla_fallback
from kiln_worker.tracer.timing_cache import TimingCache, store_for
from kiln_worker.tracer.tolerance import gross_mismatch
from kiln_worker.tracer.workdir import WorkdirDumper

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SubgraphResult:
    """What happened to one partition (a value: passes derive new ones with ``replace``)."""

    partition: Partition
    status: str
    reason: str | None
    compile_seconds: float
    graph_def: Any
    specs: list[tf.TensorSpec]
    example_args: list[Any]
    compiled: CompiledSubgraph | None = None
    measurement: Measurement | None = None
    #: With ``placement="measured"`` and a dynamic batch: the same timing at a larger batch.
    large_measurement: Measurement | None = None
    #: The batch sizes (rows) at which the model runs it compiled, when not all: ``"<= 2"``.
    batches: str | None = None

    def measured_at(self, large: bool) -> Measurement | None:
        """The measurement at the example batch, or (``large``) at the larger batch."""
        return self.large_measurement if large else self.measurement


def run_graph(
    frozen: FrozenGraph, graph_def: Any, fetches: list[str], examples: list[Any]
) -> list[Any]:
    """Run ``graph_def`` (inside a tf.function, never eagerly) and fetch tensors by name."""
    feeds = list(frozen.input_names) + frozen.state_names
    values = [tf.constant(x) for x in examples] + frozen.state_values()
    fed = dict(zip(feeds, values, strict=True))
    computed = [f for f in fetches if f not in fed]
    importer = GraphImporter(without_feeds(graph_def, feeds))

    def run(*args: tf.Tensor) -> list[tf.Tensor]:
        return importer(dict(zip(feeds, args, strict=True)), computed)

    # XLA computes the values when TensorFlow's CPU kernels cannot (see tracer.reference).
    outs = call_with_xla_fallback(run, values, "compile")[0] if computed else []
    results = dict(zip(computed, outs, strict=True))
    return [fed[f] if f in fed else results[f] for f in fetches]


def subgraph_graph_def(graph: NodeGraph, partition: Partition, library: Any) -> Any:
    """The partition's nodes as a GraphDef whose loose inputs are fed through ``input_map``."""
    inside = set(partition.nodes) | set(partition.constants)
    sub = graph_pb2.GraphDef()
    if any(_calls_functions(graph.nodes[n]) for n in partition.nodes):
        sub.library.CopyFrom(library)
    for name in partition.constants + partition.nodes:
        node = sub.node.add()
        node.CopyFrom(graph.nodes[name])
        kept = [i for i in node.input if not (i.startswith("^") and i[1:] not in inside)]
        del node.input[:]
        node.input.extend(kept)
        node.ClearField("device")
    return sub


def _calls_functions(node: Any) -> bool:
    return any(
        v.HasField("func") or (v.HasField("list") and v.list.func) for v in node.attr.values()
    )


def make_body(sub: Any, partition: Partition) -> Callable[..., list[tf.Tensor]]:
    """A Python function over the boundary inputs that builds the subgraph."""
    inputs, outputs = list(partition.inputs), list(partition.outputs)
    importer = GraphImporter(sub)

    def body(*args: tf.Tensor) -> list[tf.Tensor]:
        return importer(dict(zip(inputs, args, strict=True)), outputs)

    return body


def plain_function(sub: Any, partition: Partition, specs: list[Any]) -> Any:
    """The subgraph in plain TensorFlow, as the model runs it on CPU (its loops and branches
    lowered), to time a compiled subgraph against."""
    body = make_body(with_lowering(sub), partition)
    return tf.function(body, autograph=False).get_concrete_function(*specs)


def compile_partitions(
    backend: Backend,
    graph: NodeGraph,
    frozen: FrozenGraph,
    partitions: list[Partition],
    *,
    examples: list[np.ndarray],
    measure: bool,
    progress: Callable[[int, int], None],
    large_examples: list[np.ndarray] | None = None,
    timings: TimingCache | None = None,
) -> list[SubgraphResult]:
    """Compile each partition with ``backend``; keep a failed or slower one on CPU.

    With ``measure``, each compiled partition is timed against plain TensorFlow on its example
    inputs and, given ``large_examples`` (the inputs at a larger batch), there too; given
    ``timings``, a timing the cache holds is taken from there instead.
    """
    boundary = list(dict.fromkeys(t for p in partitions for t in p.inputs + p.outputs))
    specs = tensor_specs(frozen.graph_def, boundary)
    values = dict(
        zip(boundary, run_graph(frozen, frozen.graph_def, boundary, examples), strict=True)
    )
    large = None
    if measure and large_examples is not None:
        large_values = run_graph(frozen, frozen.graph_def, boundary, large_examples)
        large = dict(zip(boundary, large_values, strict=True))
    results = []
    for i, partition in enumerate(partitions):
        progress(i, len(partitions))
        results.append(_compile_one(backend, graph, frozen, partition, specs, values,
                                    measure, large, timings))
    return results


def _compile_one(
    backend: Backend,
    graph: NodeGraph,
    frozen: FrozenGraph,
    partition: Partition,
    specs: dict[str, tf.TensorSpec],
    values: dict[str, Any],
    measure: bool,
    large: dict[str, Any] | None,
    timings: TimingCache | None = None,
) -> SubgraphResult:
    sub = subgraph_graph_def(graph, partition, frozen.graph_def.library)
    body = make_body(sub, partition)
    in_specs = [specs[t] for t in partition.inputs]
    args = [values[t] for t in partition.inputs]
    result = SubgraphResult(partition, "compiled", None, 0.0, sub, in_specs, args)
    try:
        compiled = backend.compile_subgraph(partition.name, body, in_specs, args)
    except Exception as e:  # any compiler failure sends the subgraph to CPU
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        logger.info("%s back to CPU: %s", partition.name, first_line)
        return replace(
            result, status="fallback_cpu", reason=f"{backend.name} rejected it: {first_line}"
        )
    result = replace(result, compiled=compiled, compile_seconds=compiled.compile_seconds)
    wrong = _off_tensorflow(compiled.function, args, partition, values)
    if wrong:  # another algorithm's answer (eigenvector signs): the model must keep TF's
        return replace(result, status="fallback_cpu",
                       reason=f"its outputs differ from TensorFlow's on the example inputs: {wrong}")
    if measure:
        plain = plain_function(sub, partition, in_specs)
        timing = compare(compiled.function, plain, args, store=_store(timings, result, args))
        result = replace(result, measurement=timing)
        if timing.clearly_slower:
            result = replace(
                result,
                status="rejected_no_gain",
                reason=f"measured clearly slower than plain TensorFlow on the example inputs: "
                f"{timing.speedup:.2f}x, beyond the {timing.margin:.0%} margin",
            )
        if large is not None:
            result = _measure_large(result, plain, large, timings)
    logger.debug("compile: %s %s", partition.name, result.status)
    return result


def _off_tensorflow(
    function: Any, args: list[Any], partition: Partition, values: dict[str, Any]
) -> str | None:
    """How the compiled subgraph's outputs, run twice, are grossly off TensorFlow's values on the
    example inputs (``None``: they are not)."""
    first, second = ([np.asarray(t) for t in function(*args)] for _ in range(2))
    wrong = gross_mismatch([values[t] for t in partition.outputs], (first, second),
                           partition.outputs)
    if wrong:
        logger.info("%s back to CPU: outputs differ from TensorFlow's: %s", partition.name, wrong)
    return wrong


def _measure_large(
    result: SubgraphResult, plain: Any, values: dict[str, Any], timings: TimingCache | None
) -> SubgraphResult:
    """Time a compiled subgraph at the larger batch too. One clearly slower at the example
    batch but not at the larger one is compiled again (the model uses it at large batches)."""
    if result.compiled is None:
        return result
    args = [values[t] for t in result.partition.inputs]
    try:
        timing = compare(result.compiled.function, plain, args,
                         store=_store(timings, result, args))
    except Exception as e:  # a subgraph that cannot take another batch is judged at one only
        logger.info("%s not timed at the larger batch: %s", result.partition.name, e)
        return result
    result = replace(result, large_measurement=timing)
    if result.status == "rejected_no_gain" and not timing.clearly_slower:
        result = replace(result, status="compiled", reason=None)
    return result


def _store(
    timings: TimingCache | None, result: SubgraphResult, args: list[Any]
) -> TimingStore | None:
    """Where the timing of ``result``'s subgraph on ``args`` is kept: keyed by its graph, the
    tensors it takes and gives, and the signature it was compiled for."""
    p = result.partition
    names = [*p.inputs, "->", *p.outputs, *(str(s) for s in result.specs)]
    return store_for(timings, "subgraph", [result.graph_def], args, names)


def outputs_on_examples(result: SubgraphResult) -> list[np.ndarray]:
    """The compiled subgraph's outputs on its example inputs (for replay dumps)."""
    fn = result.compiled.function if result.compiled else None
    if fn is None:
        return []
    return [np.asarray(t) for t in fn(*result.example_args)]


def dump_subgraphs(dump: WorkdirDumper, backend: Any, results: list[SubgraphResult]) -> None:
    """``--workdir``: each subgraph's graph, example inputs and outputs, compile log and HLO."""
    if not dump.enabled:
        return
    for r in results:
        base = f"subgraphs/{r.partition.name}"
        dump.graph_def(f"{base}/graph", r.graph_def)
        args = {f"arg_{i}": np.asarray(a) for i, a in enumerate(r.example_args)}
        dump.arrays(f"{base}/inputs.npz", args)
        log = r.compiled.log if r.compiled else ""
        log += f"\nstatus: {r.status}\nreason: {r.reason}\ninputs: {r.partition.inputs}"
        log += f"\noutputs: {r.partition.outputs}\n"
        dump.text(f"{base}/compile.log", log)
        if r.compiled is None:
            continue
        outs = outputs_on_examples(r)
        dump.arrays(f"{base}/outputs.npz", {f"out_{i}": o for i, o in enumerate(outs)})
        try:
            hlo = backend.hlo_text(make_body(r.graph_def, r.partition), r.example_args)
        except Exception as e:  # a dump must not fail the trace
            hlo = f"HLO unavailable: {e}"
        dump.text(f"{base}/hlo.txt", hlo)
