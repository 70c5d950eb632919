"""Pass ``verify``: run the traced model on the example inputs, compare it with the original's
outputs, and build the final report (placement, subgraphs, CPU ops with reasons, warnings).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from kiln_worker.tracer.compile import SubgraphResult
from kiln_worker.tracer.freeze import FrozenGraph
from kiln_worker.tracer.graphs import NodeGraph, tensor_specs
from kiln_worker.tracer.inputs import TracedFunction
from kiln_worker.tracer.report import build_report, numerical_check
from kiln_worker.tracer.wrap import Wrapped

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verification:
    """The ``verify`` pass's result: the report (``timings`` are added when the trace ends)."""

    report: dict[str, Any]
    within_tolerance: bool


def cpu_reasons(reasons: Mapping[str, str], results: list[SubgraphResult]) -> dict[str, str]:
    """Why each node stays on CPU: the earlier passes' reasons plus each subgraph's outcome."""
    merged = dict(reasons)
    for r in results:
        if r.status != "compiled":
            merged.update(
                dict.fromkeys(r.partition.nodes, f"{r.partition.name} {r.status}: {r.reason}")
            )
    return merged


def warn_low_ratio(report: dict[str, Any]) -> None:
    """Warn (and record it) when under half of the ops are on the accelerator."""
    if report["on_neuron_ratio"] < 0.5:
        message = (
            f"only {report['ops_on_accelerator']} of {report['ops_total']} ops "
            f"({report['on_neuron_ratio']:.0%}) run on the accelerator; see report['cpu_ops']"
        )
        report["warnings"].append(message)
        warnings.warn(message, stacklevel=5)


def nothing_compiled_reason(report: dict[str, Any]) -> str | None:
    """Why no subgraph was compiled (``None`` when one was): the model still runs, on CPU."""
    statuses = [s["status"] for s in report["subgraphs"]]
    if "compiled" in statuses:
        return None
    if not report["ops_total"]:
        return "the function has no ops to compile (its outputs are its inputs or constants)"
    if not statuses:
        return (
            "no subgraph worth compiling: no op is supported by the backend, or the supported "
            "ones form only trivial subgraphs; each op's reason is in cpu_ops"
        )
    return "every subgraph went back to CPU: " + "; ".join(
        f"{s['name']} {s['status']}: {s['reason']}" for s in report["subgraphs"]
    )


#: Ops that call back into the Python process (tf.py_function, tf.numpy_function)
PYTHON_CALLBACK_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})


def python_callbacks(graph_def: Any) -> list[str]:
    """Names of the nodes of ``graph_def`` (and of its functions) that call Python code."""
    nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
    return [n.name for n in nodes if n.op in PYTHON_CALLBACK_OPS]


def verify(
    traced: TracedFunction,
    frozen: FrozenGraph,
    graph: NodeGraph,
    results: list[SubgraphResult],
    reasons: Mapping[str, str],
    wrapped: Wrapped,
    *,
    backend: str,
    flags: Any,
    placement: dict[str, Any],
) -> Verification:
    """Compare the traced model with the original outputs and build the report.

    Args:
        traced: the ``inputs`` pass's result (examples and reference outputs).
        frozen: the ``freeze`` pass's result.
        graph: the frozen graph's nodes.
        results: every subgraph's outcome, as finally decided.
        reasons: why each node outside the subgraphs stays on CPU.
        wrapped: the ``wrap`` pass's result.
        backend: the backend's name.
        flags: the ``CompilerFlags`` in force.
        placement: the placement mode and the whole-model measurements (``report["placement"]``).

    Returns:
        The report, and whether the outputs matched within tolerance.
    """
    from kiln_client.flags import xla_unsupported_options

    outputs = traced.output_structure.flatten(
        wrapped.model(traced.input_structure.pack(traced.examples))
    )
    check = numerical_check(
        traced.reference_outputs,
        [np.asarray(o) for o in outputs],
        traced.output_structure.paths,
        traced.varying,
    )
    names = list(
        dict.fromkeys(t for r in results for t in r.partition.inputs + r.partition.outputs)
    )
    report = build_report(
        backend=backend,
        flags=flags.model_dump(mode="json"),
        graph=graph,
        results=results,
        reasons=cpu_reasons(reasons, results),
        specs=tensor_specs(frozen.graph_def, names),
    )
    report.update(
        numerical_check=check,
        dynamic_batch=wrapped.batch_mode != "fixed",
        batch_mode=wrapped.batch_mode,
        placement=placement,
        verify={"reference": traced.reference_source, "reason": traced.reference_reason},
    )
    report["nothing_compiled"] = nothing_compiled_reason(report)
    report["warnings"].extend(wrapped.warnings)
    callbacks = python_callbacks(frozen.graph_def)
    if callbacks:
        report["warnings"].append(
            f"the model calls Python functions (tf.py_function / tf.numpy_function: "
            f"{', '.join(callbacks[:5])}); they stay on CPU and are not saved with the traced "
            "model, so its SavedModel runs only in this Python process (not in TensorFlow "
            "Serving or another process): write them with TensorFlow ops to deploy it"
        )
    for flag, why in xla_unsupported_options(flags).items():
        report["warnings"].append(f"{flag} is not honoured by the xla backend: {why}")
    if not check["within_tolerance"]:
        report["warnings"].append(f"traced outputs differ from the original: {check}")
    for message in report["warnings"]:
        warnings.warn(message, stacklevel=4)
    warn_low_ratio(report)
    return Verification(report, bool(check["within_tolerance"]))
