"""``trace`` and ``analyze_model``: the tensorflow.neuron.trace API, compiled with XLA.

``trace`` is one short list of passes: inputs → freeze → place → partition → compile → rewrite →
wrap → verify. Each pass lives in its own module; errors name the pass that raised them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from kiln_worker.tracer.errors import BackendUnavailableError, TraceError, TraceInputError

logger = logging.getLogger(__name__)
ProgressCallback = Callable[[str, float, str], None]
BACKENDS = ("xla", "neuron")


@contextlib.contextmanager
def run_pass(name: str, timings: dict[str, float] | None = None) -> Iterator[None]:
    """Run one pass: time it, and turn unexpected failures into a TraceError naming it."""
    start = time.perf_counter()
    try:
        yield
    except TraceError:
        raise
    except Exception as e:
        raise TraceError(f"{type(e).__name__}: {e}", name) from e
    finally:
        if timings is not None:
            timings[f"{name}_seconds"] = round(time.perf_counter() - start, 4)


def resolve_flags(flags: Any) -> Any:
    """``None`` reads ``NEURON_CC_FLAGS`` (once, here); a string or list is parsed.

    Raises:
        TraceInputError: malformed or unknown flags (the message lists the known ones).
    """
    from kiln_client.flags import CompilerFlags, FlagsError, parse_flags

    if isinstance(flags, CompilerFlags):
        return flags
    try:
        return parse_flags(os.environ.get("NEURON_CC_FLAGS", "") if flags is None else flags)
    except FlagsError as e:
        raise TraceInputError(str(e), "flags") from e


def resolve_backend(backend: str | None) -> str:
    """The backend argument, else ``KILN_TRACE_BACKEND``, else ``xla``.

    Raises:
        BackendUnavailableError: an unknown backend name.
    """
    name = (backend or os.environ.get("KILN_TRACE_BACKEND") or "xla").strip().lower()
    if name not in BACKENDS:
        raise BackendUnavailableError(
            f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}", "backend"
        )
    return name


def trace(
    func: Any,
    example_inputs: Any,
    subgraph_builder_function: Callable[[Any], bool] | None = None,
    *,
    flags: Any = None,
    backend: str | None = None,
    on_progress: ProgressCallback | None = None,
) -> Any:
    """Trace ``func`` into an inference-only keras.Model whose subgraphs are compiled.

    Example::

        import tensorflow as tf
        import kiln_worker as tfn

        input0 = tf.keras.layers.Input(3)
        dense0 = tf.keras.layers.Dense(3)(input0)
        model = tf.keras.Model(inputs=[input0], outputs=[dense0])
        example_inputs = tf.random.uniform([1, 3])
        model_neuron = tfn.trace(model, example_inputs)  # trace
        model_neuron.save('./model_neuron')

        def subgraph_builder_function(node):
            return node.op == 'MatMul'
        model_neuron = tfn.trace(model, example_inputs,
                                 subgraph_builder_function=subgraph_builder_function)

    Args:
        func: a keras.Model (Keras 2 or 3), tf.function, ConcreteFunction or callable.
        example_inputs: a Tensor (or ndarray) or a list → ``func(x)``; a tuple → ``func(*x)``;
            a dict → ``func(**x)`` (a keras.Model with dict inputs gets the dict).
        subgraph_builder_function: ``f(NodeDef) -> bool``; only nodes it accepts are placed on
            the accelerator. Without it, placement is automatic (measured, fastest result).
        flags: ``None`` reads ``NEURON_CC_FLAGS``; a string, a list or a ``CompilerFlags``.
        backend: ``"xla"`` (default) or ``"neuron"``; ``None`` reads ``KILN_TRACE_BACKEND``.
        on_progress: ``f(stage, fraction, message)`` with stages tracing/compiling/verifying.

    Returns:
        A ``tf_keras.Model`` with ``.report`` and ``.on_neuron_ratio``.

    Raises:
        TraceInputError: bad func, example_inputs or flags.
        UnsupportedModelError: state that cannot be frozen (e.g. lookup tables).
        BackendUnavailableError: the backend is not available here.
        TraceError: any other failure, naming the pass.
    """
    parsed = resolve_flags(flags)
    name = resolve_backend(backend)
    if name == "neuron":
        from kiln_worker.tracer.backends.neuron import trace_with_neuron

        return trace_with_neuron(func, example_inputs, subgraph_builder_function, parsed)
    state = TraceState(parsed, subgraph_builder_function, on_progress or _no_progress)
    state.run_inputs(func, example_inputs)
    state.run_freeze()
    state.run_place()
    state.run_partition()
    state.run_compile()
    state.run_rewrite()
    state.run_wrap()
    state.run_verify()
    return state.finish()


def analyze_model(func: Any, example_inputs: Any, *, backend: str | None = None) -> dict[str, Any]:
    """Tell, before compiling anything, which ops the backend supports and why not.

    Args:
        func: as for :func:`trace`.
        example_inputs: as for :func:`trace`.
        backend: as for :func:`trace` (only ``xla`` can analyse).

    Returns:
        ``{"backend", "ops_total", "ops_supported", "supported_ratio", "op_types",
        "unsupported": [{"name", "op", "reason"}], "proposed_subgraphs": [...]}``.

    Raises:
        TraceInputError, UnsupportedModelError, BackendUnavailableError: as for :func:`trace`.
    """
    if resolve_backend(backend) != "xla":
        raise BackendUnavailableError("analyze_model supports the xla backend only", "backend")
    state = TraceState(resolve_flags(""), None, _no_progress)
    state.run_inputs(func, example_inputs)
    state.run_freeze()
    state.run_place()
    state.run_partition()
    return state.analysis()


def _no_progress(stage: str, fraction: float, message: str) -> None:
    logger.debug("%s %.2f %s", stage, fraction, message)


def warn_low_ratio(report: dict[str, Any]) -> None:
    """Warn (and record it) when under half of the ops are on the accelerator."""
    if report["on_neuron_ratio"] < 0.5:
        message = (
            f"only {report['ops_on_accelerator']} of {report['ops_total']} ops "
            f"({report['on_neuron_ratio']:.0%}) run on the accelerator; see report['cpu_ops']"
        )
        report["warnings"].append(message)
        warnings.warn(message, stacklevel=5)


class TraceState:
    """The values passed from pass to pass; each ``run_*`` method is one pass."""

    def __init__(
        self, flags: Any, builder: Callable[[Any], bool] | None, progress: ProgressCallback
    ) -> None:
        from kiln_worker.tracer.backends.xla import XlaBackend
        from kiln_worker.tracer.workdir import WorkdirDumper

        self.flags, self.builder, self.progress = flags, builder, progress
        self.start = time.perf_counter()
        self.timings: dict[str, float] = {}
        self.backend = XlaBackend()
        self.dump = WorkdirDumper(flags.workdir)
        self.warnings: list[str] = []
        self.report: dict[str, Any] = {}

    def run_inputs(self, func: Any, example_inputs: Any) -> None:
        """Pass ``inputs``: one concrete function over flat tensors."""
        from kiln_worker.tracer.inputs import trace_function

        self.progress("tracing", 0.0, "tracing func on the example inputs")
        with run_pass("inputs", self.timings):
            self.traced = trace_function(func, example_inputs)
        # False when TensorFlow's CPU kernels cannot run the original (then XLA ran it): automatic
        # placement then compiles every op XLA takes, with no timing against plain TensorFlow.
        self.cpu_runs = self.traced.reference_source == "tensorflow"
        self.dump.graph_def("graphs/traced", self.traced.concrete.graph.as_graph_def())

    def run_freeze(self) -> None:
        """Pass ``freeze``: constants (or extracted weights) and grappler clean-up."""
        from kiln_worker.tracer import freeze

        self.progress("tracing", 0.3, "freezing variables")
        with run_pass("freeze", self.timings):
            extract = bool(self.flags.extract_weights)
            fn = freeze.extract_weights if extract else freeze.freeze
            self.frozen = fn(self.traced.concrete)
        self.dump.graph_def("graphs/frozen", self.frozen.graph_def)

    def run_place(self) -> None:
        """Pass ``place``: backend support ∩ callback (or automatic heuristics)."""
        from kiln_worker.tracer import placement
        from kiln_worker.tracer.partition import NodeGraph

        with run_pass("place", self.timings):
            library = self.frozen.graph_def.library
            backend_rule = placement.backend_policy(self.backend, library)
            rules = [placement.plumbing_policy(), backend_rule]
            if self.builder:
                rules.append(placement.builder_policy(self.builder))
            elif self.cpu_runs:  # else every op XLA takes must be compiled: no CPU kernel
                rules.append(placement.auto_policy())
            policy = placement.all_of(*rules)
            self.graph = NodeGraph(self.frozen.graph_def)
            self.candidates, self.reasons = placement.place(self.frozen.graph_def, policy)

    def run_partition(self) -> None:
        """Pass ``partition``: acyclic clusters; automatic mode drops trivial ones."""
        from kiln_worker.tracer import partition as part

        with run_pass("partition", self.timings):
            groups = part.propose_partitions(self.graph, self.candidates)
            partitions = part.fuse_partitions(
                self.graph, groups, self.candidates, self.frozen.output_names
            )
            if self.builder is None and self.cpu_runs:
                partitions = self._drop_trivial(partitions)
            if not part.contracted_is_acyclic(self.graph, partitions):
                raise TraceError("partitioning produced a cycle (a bug)", "partition")
            for i, p in enumerate(partitions):
                p.name = f"kiln_subgraph_{i}"
            self.partitions = partitions

    def _drop_trivial(self, partitions: list[Any]) -> list[Any]:
        from kiln_worker.tracer.partition import is_trivial

        kept = []
        for p in partitions:
            if is_trivial(self.graph, p):
                for n in p.nodes:
                    self.reasons[n] = (
                        "trivial subgraph (fewer than 2 compute ops): not worth a call"
                    )
            else:
                kept.append(p)
        return kept

    def run_compile(self) -> None:
        """Pass ``compile``: each subgraph compiled now; failures and no-gain go back to CPU."""
        from kiln_worker.tracer.compile import compile_partitions

        def progress(i: int, n: int) -> None:
            self.progress("compiling", i / max(n, 1), f"compiling subgraph {i + 1} of {n}")

        with run_pass("compile", self.timings):
            self.results = compile_partitions(
                self.backend,
                self.graph,
                self.frozen,
                self.partitions,
                examples=self.traced.examples,
                measure=self.builder is None and self.cpu_runs,
                progress=progress,
            )
        for r in self.results:
            if r.status != "compiled":
                for n in r.partition.nodes:
                    self.reasons[n] = f"{r.partition.name} {r.status}: {r.reason}"

    def run_rewrite(self) -> None:
        """Pass ``rewrite``: one call node per kept subgraph."""
        from kiln_worker.tracer.rewrite import rewrite_graph

        with run_pass("rewrite", self.timings):
            kept = [r for r in self.results if r.status == "compiled"]
            self.rewritten, self.output_names = rewrite_graph(
                self.frozen.graph_def,
                kept,
                self.frozen.output_names,
                self.frozen.input_names + list(self.frozen.weights),
            )
        self.dump.graph_def("graphs/partitioned", self.rewritten)

    def run_wrap(self) -> None:
        """Pass ``wrap``: the keras.Model, with the batch behaviour the graph allows."""
        from kiln_worker.tracer import wrap

        with run_pass("wrap", self.timings):
            self.model, self.batch_mode = wrap.build_model(self)
            compiled = any(r.status == "compiled" for r in self.results)
            if self.builder is None and self.cpu_runs and compiled:
                self._whole_model_check()

    def _whole_model_check(self) -> None:
        """Automatic mode: keep the subgraphs only if the whole model is faster with them.

        Each subgraph paid off alone, but every call has a fixed cost; many small calls (e.g.
        between depthwise convolutions) can add up to a slower model than the frozen graph.
        """
        import tensorflow as tf

        from kiln_worker.tracer import wrap
        from kiln_worker.tracer.compile import GAIN_THRESHOLD, speedup
        from kiln_worker.tracer.rewrite import rewrite_graph

        compiled_state = (self.rewritten, self.output_names, self.model, self.batch_mode)
        self.rewritten, self.output_names = rewrite_graph(
            self.frozen.graph_def,
            [],
            self.frozen.output_names,
            self.frozen.input_names + list(self.frozen.weights),
        )
        plain_model, plain_mode = wrap.build_model(self)
        args = [tf.constant(x) for x in self.traced.examples]
        gain = speedup(compiled_state[2]._serve, plain_model._serve, args)
        if gain * GAIN_THRESHOLD >= 1.0:
            self.rewritten, self.output_names, self.model, self.batch_mode = compiled_state
            return
        self.model, self.batch_mode = plain_model, plain_mode
        for r in self.results:
            if r.status == "compiled":
                r.status = "rejected_no_gain"
                r.reason = (
                    f"measured the whole model: {gain:.2f}x as fast with its subgraphs compiled"
                )
                for n in r.partition.nodes:
                    self.reasons[n] = f"{r.partition.name} rejected_no_gain: {r.reason}"

    def run_verify(self) -> None:
        """Pass ``verify``: compare to the original on the example inputs; write the report."""
        from kiln_worker.tracer import wrap

        self.progress("verifying", 0.9, "comparing the traced model to the original")
        with run_pass("verify", self.timings):
            wrap.verify(self)

    def finish(self) -> Any:
        """Attach the final report, dump it, and return the model."""
        self.report["timings"] = dict(self.timings)
        self.report["timings"]["trace_seconds"] = round(time.perf_counter() - self.start, 3)
        self.model.set_report(self.report)
        self.dump.json("report.json", self.report)
        self.progress("verifying", 1.0, "done")
        return self.model

    def analysis(self) -> dict[str, Any]:
        """The ``analyze_model`` result."""
        from kiln_worker.tracer.report import counted_ops

        ops = counted_ops(self.graph)
        supported = [n for n in ops if n in self.candidates]
        op_types: dict[str, dict[str, Any]] = {}
        for n in ops:
            entry = op_types.setdefault(self.graph.nodes[n].op, {"count": 0, "supported": 0})
            entry["count"] += 1
            entry["supported"] += n in self.candidates
        return {
            "backend": "xla",
            "ops_total": len(ops),
            "ops_supported": len(supported),
            "supported_ratio": round(len(supported) / len(ops), 4) if ops else 0.0,
            "op_types": op_types,
            "unsupported": [
                {"name": n, "op": self.graph.nodes[n].op, "reason": self.reasons[n]}
                for n in ops
                if n not in self.candidates
            ],
            "proposed_subgraphs": [{"name": p.name, "ops": p.nodes} for p in self.partitions],
        }
