"""``trace`` and ``analyze_model``: the tensorflow.neuron.trace API, compiled with XLA.

``trace`` is one short list of passes: inputs → freeze → place → partition → compile → rewrite →
wrap → verify. Each pass lives in its own module; errors name the pass that raised them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from kiln_worker.tracer.errors import (
    BackendUnavailableError,
    TraceError,
    TraceInputError,
    pass_error,
)
from kiln_worker.tracer.workdir import WorkdirDumper

logger = logging.getLogger(__name__)
ProgressCallback = Callable[[str, float, str], None]
BACKENDS = ("xla", "neuron")
#: The placement modes (``trace(placement=...)``, ``KILN_PLACEMENT``).
PLACEMENTS = ("measured", "all")
T = TypeVar("T")


@contextlib.contextmanager
def run_pass(name: str, timings: dict[str, float] | None = None) -> Iterator[None]:
    """Run one pass: time it, and turn unexpected failures into a TraceError naming it."""
    start = time.perf_counter()
    try:
        yield
    except TraceError:
        raise
    except Exception as e:
        raise pass_error(e, name) from e
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


def resolve_placement(placement: str | None, has_builder: bool) -> str:
    """The placement argument, else ``KILN_PLACEMENT``, else ``all`` with a
    ``subgraph_builder_function`` (the callback decides, nothing is timed) and ``measured``
    without one.

    Raises:
        TraceInputError: an unknown placement name.
    """
    default = "all" if has_builder else "measured"
    name = (placement or os.environ.get("KILN_PLACEMENT") or default).strip().lower()
    if name not in PLACEMENTS:
        raise TraceInputError(
            f"unknown placement {name!r}; choose one of {', '.join(PLACEMENTS)} "
            "(argument placement= or KILN_PLACEMENT)",
            "placement",
        )
    return name


def trace(
    func: Any,
    example_inputs: Any,
    subgraph_builder_function: Callable[[Any], bool] | None = None,
    *,
    flags: Any = None,
    backend: str | None = None,
    placement: str | None = None,
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
            the accelerator. Without it, placement is automatic.
        flags: ``None`` reads ``NEURON_CC_FLAGS``; a string, a list or a ``CompilerFlags``.
        backend: ``"xla"`` (default) or ``"neuron"``; ``None`` reads ``KILN_TRACE_BACKEND``.
        placement: ``"measured"`` (keep each subgraph, and the whole compiled model, unless
            measured clearly slower than plain TensorFlow beyond the noise) or ``"all"`` (every
            supported op compiled, nothing timed: tensorflow-neuron's behaviour). ``None`` reads
            ``KILN_PLACEMENT``, else ``measured``, or ``all`` with a subgraph_builder_function.
        on_progress: ``f(stage, fraction, message)`` with stages tracing/compiling/verifying.

    Returns:
        A ``tf_keras.Model`` with ``.report`` and ``.on_neuron_ratio``.

    Raises:
        TraceInputError: bad func, example_inputs or flags.
        UnsupportedModelError: state that cannot be kept (tables the function writes, iterators).
        BackendUnavailableError: the backend is not available here.
        TraceError: any other failure, naming the pass.
    """
    parsed = resolve_flags(flags)
    mode = resolve_placement(placement, subgraph_builder_function is not None)
    if resolve_backend(backend) == "neuron":
        from kiln_worker.tracer.backends.neuron import trace_with_neuron

        return trace_with_neuron(func, example_inputs, subgraph_builder_function, parsed)
    from kiln_worker.tracer import passes
    from kiln_worker.tracer.backends.xla import XlaBackend
    from kiln_worker.tracer.timing_cache import TimingCache
    from kiln_worker.tracer.verify import verify

    run, dump, xla = PassRunner(on_progress), WorkdirDumper(parsed.workdir), XlaBackend()
    traced = run("inputs", passes.trace_inputs, func, example_inputs, dump)
    if traced.reference_source != "tensorflow":
        # TensorFlow's CPU kernels cannot run the original (XLA gave the reference outputs):
        # plain TensorFlow is no alternative, so every op XLA takes is compiled, untimed.
        mode = "all"
    # A subgraph_builder_function decides placement itself: nothing is timed or second-guessed.
    measured = mode == "measured" and subgraph_builder_function is None
    frozen = run("freeze", passes.freeze_graph, traced, parsed, dump)
    placed = run("place", passes.place_nodes, frozen, xla, subgraph_builder_function, mode)
    partitioning = run("partition", passes.partition, placed, frozen,
                       "measured" if measured else "all")
    larger = passes.larger_examples(traced, frozen) if measured else None
    timings = TimingCache.from_env(xla.name) if measured else None  # KILN_TIMING_CACHE
    results = run(
        "compile",
        passes.compile_subgraphs,
        *(xla, placed, frozen, partitioning, traced),
        measure=measured,
        progress=run.compile_progress,
        large_examples=larger,
        timings=timings,
    )
    rewritten = run("rewrite", passes.rewrite, frozen, results, dump)
    wrapped = run("wrap", passes.wrap, traced, frozen, rewritten, parsed)
    decision = passes.Decision(results, rewritten, wrapped)
    if measured:
        decision = run("measure", passes.measure_model, traced, frozen, parsed, decision, larger,
                       timings)
    placement_entry = passes.placement_report(mode, decision)
    if timings is not None:  # which measurements the cache gave is said per measurement too
        placement_entry["timing_cache"] = timings.summary()
    verification = run(
        "verify",
        verify,
        *(traced, frozen, placed.graph, decision.results, partitioning.reasons),
        decision.wrapped,
        backend=xla.name,
        flags=parsed,
        placement=placement_entry,
    )
    return run.finish(decision, verification, xla, dump)


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
    from kiln_worker.tracer import passes
    from kiln_worker.tracer.backends.xla import XlaBackend
    from kiln_worker.tracer.report import analysis

    run, dump, xla = PassRunner(None), WorkdirDumper(None), XlaBackend()
    traced = run("inputs", passes.trace_inputs, func, example_inputs, dump)
    frozen = run("freeze", passes.freeze_graph, traced, resolve_flags(""), dump)
    placed = run("place", passes.place_nodes, frozen, xla, None, "measured")
    partitioning = run("partition", passes.partition, placed, frozen, "measured")
    return analysis(placed, partitioning.partitions)


def _no_progress(stage: str, fraction: float, message: str) -> None:
    logger.debug("%s %.2f %s", stage, fraction, message)


#: Progress reported when a pass starts: (stage, fraction, message).
_PROGRESS = {
    "inputs": ("tracing", 0.0, "tracing func on the example inputs"),
    "freeze": ("tracing", 0.3, "freezing variables"),
    "verify": ("verifying", 0.9, "comparing the traced model to the original"),
}


class PassRunner:
    """Runs the passes by name: reports progress, times each, names it in errors.

    It holds no value a pass reads: each pass gets its inputs as arguments.
    """

    def __init__(self, progress: ProgressCallback | None) -> None:
        self.progress = progress or _no_progress
        self.start = time.perf_counter()
        self.timings: dict[str, float] = {}

    def __call__(self, name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run pass ``name`` as ``fn(*args, **kwargs)`` and return its result."""
        if name in _PROGRESS:
            self.progress(*_PROGRESS[name])
        with run_pass(name, self.timings):
            return fn(*args, **kwargs)

    def compile_progress(self, i: int, n: int) -> None:
        """Progress of the ``compile`` pass, once per subgraph."""
        self.progress("compiling", i / max(n, 1), f"compiling subgraph {i + 1} of {n}")

    def finish(self, decision: Any, verification: Any, backend: Any, dump: WorkdirDumper) -> Any:
        """Attach the report (with timings) to the model, dump it, and return the model."""
        from kiln_worker.tracer.compile import dump_subgraphs
        from kiln_worker.tracer.report import without_timings

        report = dict(verification.report)
        report["timings"] = dict(self.timings)
        report["timings"]["trace_seconds"] = round(time.perf_counter() - self.start, 3)
        decision.wrapped.model.set_report(report, saved=without_timings(report))
        dump.graph_def("graphs/final", decision.rewritten.graph_def)
        dump_subgraphs(dump, backend, decision.results)
        dump.json("report.json", report)
        self.progress("verifying", 1.0, "done")
        return decision.wrapped.model
