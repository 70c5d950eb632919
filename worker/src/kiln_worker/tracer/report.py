"""The placement report: one JSON-serialisable dict (schema in docs/architecture.md)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from kiln_worker.tracer.compile import SubgraphResult
from kiln_worker.tracer.graphs import NodeGraph
from kiln_worker.tracer.partition import Partition
from kiln_worker.tracer.placement import Placement
from kiln_worker.tracer.tolerance import compare_arrays, summarise

logger = logging.getLogger(__name__)
#: Node types that are not counted as ops (graph plumbing and weights).
UNCOUNTED = frozenset({"Placeholder", "NoOp", "Const"})


def counted_ops(graph: NodeGraph) -> list[str]:
    """Names of the nodes that count as ops, in topological order."""
    return [n for n in graph.order if graph.nodes[n].op not in UNCOUNTED]


def spec_dict(name: str, spec: tf.TensorSpec) -> dict[str, Any]:
    """One boundary tensor as ``{"name", "dtype", "shape"}`` (shape as inferred in the graph)."""
    shape = spec.shape.as_list() if spec.shape.rank is not None else None
    return {"name": name, "dtype": spec.dtype.name, "shape": shape}


def subgraph_entry(
    graph: NodeGraph, result: SubgraphResult, specs: dict[str, tf.TensorSpec]
) -> dict[str, Any]:
    """The report entry of one subgraph."""
    p = result.partition
    entry = {
        "name": p.name,
        "ops": list(p.nodes),
        "op_types": dict(Counter(graph.nodes[n].op for n in p.nodes)),
        "inputs": [spec_dict(t, specs[t]) for t in p.inputs],
        "outputs": [spec_dict(t, specs[t]) for t in p.outputs],
        "status": result.status,
        "reason": result.reason,
        "compile_seconds": round(result.compile_seconds, 4),
    }
    if result.measurement is not None:
        entry["measured_speedup"] = round(result.measurement.speedup, 3)
        entry["measurement"] = result.measurement.as_dict()
    if result.large_measurement is not None:
        entry["large_batch_measurement"] = result.large_measurement.as_dict()
    if result.batches is not None:
        entry["batches"] = result.batches
    return entry


def cpu_ops(graph: NodeGraph, placed: set[str], reasons: Mapping[str, str]) -> list[dict[str, str]]:
    """Every counted op left on CPU, with the reason."""
    return [
        {"name": n, "op": graph.nodes[n].op, "reason": reasons.get(n, "not placed")}
        for n in counted_ops(graph)
        if n not in placed
    ]


def numerical_check(
    reference: list[np.ndarray],
    outputs: list[np.ndarray],
    names: list[str] | None = None,
    varying: Sequence[bool] = (),
) -> dict[str, Any]:
    """Original vs. traced outputs, each within its dtype's tolerance (see ``tolerance``);
    outputs ``varying`` between the original's runs (random draws) by shape and dtype only."""
    keys = names or [str(i) for i in range(len(reference))]
    random = list(varying) or [False] * len(reference)
    return summarise(
        {
            key or "output": compare_arrays(a, b, varying=v)
            for key, a, b, v in zip(keys, reference, outputs, random, strict=True)
        }
    )


def build_report(
    *,
    backend: str,
    flags: dict[str, Any],
    graph: NodeGraph,
    results: list[SubgraphResult],
    reasons: Mapping[str, str],
    specs: dict[str, tf.TensorSpec],
) -> dict[str, Any]:
    """The report before verification (``numerical_check``, ``timings`` come later)."""
    placed = {n for r in results if r.status == "compiled" for n in r.partition.nodes}
    total = len(counted_ops(graph))
    on_accelerator = len([n for n in counted_ops(graph) if n in placed])
    ratio = on_accelerator / total if total else 0.0
    return {
        "backend": backend,
        "tensorflow_version": tf.__version__,
        "flags": flags,
        "ops_total": total,
        "ops_on_accelerator": on_accelerator,
        "on_neuron_ratio": round(ratio, 4),
        "subgraphs": [subgraph_entry(graph, r, specs) for r in results],
        "cpu_ops": cpu_ops(graph, placed, reasons),
        "dynamic_batch": False,
        "warnings": [],
        "timings": {},
        "numerical_check": None,
    }


#: Report keys that describe this run rather than its result, at any depth: wall-clock seconds
#: (``timings``, a subgraph's ``compile_seconds``) and what the timing cache gave
#: (``placement.timing_cache``; ``cached_at``, when a measurement taken from it was timed).
RUN_TIMINGS = ("timings", "compile_seconds", "timing_cache", "cached_at")


def without_timings(report: dict[str, Any]) -> dict[str, Any]:
    """The report without what describes this run only, as the saved model carries it: the
    same model, inputs and flags then save the same bytes, whether their measurements were
    timed now or taken from the timing cache (all of it stays in ``model.report`` and the job's
    report.json)."""
    return dict(_without(report, RUN_TIMINGS))


def _without(value: Any, keys: tuple[str, ...]) -> Any:
    if isinstance(value, dict):
        return {k: _without(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [_without(v, keys) for v in value]
    return value


def analysis(placement: Placement, partitions: list[Partition]) -> dict[str, Any]:
    """The ``analyze_model`` result: supported ops by type, the others with reasons."""
    graph, candidates = placement.graph, placement.candidates
    ops = counted_ops(graph)
    op_types: dict[str, dict[str, Any]] = {}
    for n in ops:
        entry = op_types.setdefault(graph.nodes[n].op, {"count": 0, "supported": 0})
        entry["count"] += 1
        entry["supported"] += n in candidates
    supported = [n for n in ops if n in candidates]
    return {
        "backend": "xla",
        "ops_total": len(ops),
        "ops_supported": len(supported),
        "supported_ratio": round(len(supported) / len(ops), 4) if ops else 0.0,
        "op_types": op_types,
        "unsupported": [
            {"name": n, "op": graph.nodes[n].op, "reason": placement.reasons[n]}
            for n in ops
            if n not in candidates
        ],
        "proposed_subgraphs": [{"name": p.name, "ops": p.nodes} for p in partitions],
    }
