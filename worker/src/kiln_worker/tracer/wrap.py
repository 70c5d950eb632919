"""Pass ``wrap``: the rewritten GraphDef as an inference-only ``tf_keras.Model``.

``call`` invokes one prebuilt tf.function that imports the GraphDef (a frozen graph run outside
a tf.function was measured 6x slower). The report rides along as a string-returning tf.function,
so it survives ``model.save`` and ``tf.saved_model.load`` (``loaded.kiln_report()``, without
the run's wall-clock seconds: the same trace saves the same bytes).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras

from kiln_worker.tracer.batching import repeat_batch
from kiln_worker.tracer.freeze import FrozenGraph
from kiln_worker.tracer.graphs import (
    XLA_MUST_COMPILE,
    GraphImporter,
    not_autograph,
    own_function,
    tensor_specs,
    without_feeds,
)
from kiln_worker.tracer.inputs import TracedFunction, example_specs
from kiln_worker.tracer.reference import call_with_xla_fallback
from kiln_worker.tracer.serving_jit import compile_wrappers
from kiln_worker.tracer.structure import Structure
from kiln_worker.tracer.tolerance import compare_arrays

logger = logging.getLogger(__name__)


@dataclass
class ServingGraph:
    """Everything the wrapper needs to run the rewritten graph."""

    graph_def: Any
    input_names: list[str]
    output_names: list[str]
    input_specs: list[tf.TensorSpec]
    output_specs: list[tf.TensorSpec]
    input_structure: Structure
    output_structure: Structure
    batch_mode: str  # "dynamic" | "fixed" | "pad"
    traced_batch: int | None
    weights: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, Any] = field(default_factory=dict)
    #: per input, whether its axis 0 is the batch (scalars and fixed side inputs are not)
    batched: tuple[bool, ...] = ()

    @property
    def fed_names(self) -> list[str]:
        """Placeholders fed at run time: the inputs, then the weights, then the tables."""
        return self.input_names + list(self.weights) + list(self.tables)

    @property
    def batch_arg(self) -> int:
        """The position of the first batched input (whose rows are the batch size)."""
        return self.batched.index(True) if True in self.batched else 0


def only_calls(graph_def: Any) -> bool:
    """The graph runs nothing but compiled calls (and the identities around them)."""
    ops = [n for n in graph_def.node if n.op not in ("Identity", "Placeholder", "NoOp")]
    return bool(ops) and all(XLA_MUST_COMPILE in n.attr for n in ops)


class TracedModel(tf_keras.Model):  # type: ignore[misc]
    """An inference-only model running a partitioned, XLA-compiled graph."""

    def __init__(
        self,
        serving: ServingGraph,
        report: dict[str, Any],
        large: tuple[ServingGraph, int] | None = None,
    ) -> None:
        # autocast=False: inputs keep the example inputs' dtypes (float16, float64 ...), whatever
        # the Keras dtype policy (a mixed-precision policy would cast them).
        super().__init__(name="kiln_traced_model", autocast=False)
        self._in_structure = serving.input_structure
        self._out_structure = serving.output_structure
        self._kiln_weights = list(serving.weights.values())
        # Tracked, so that saving the model saves the tables (and their contents) too.
        self._kiln_tables = list(serving.tables.values())
        self._serve = _serve_function(serving, large)
        self.set_report(report)

    def set_report(self, report: dict[str, Any], saved: dict[str, Any] | None = None) -> None:
        """Replace the report; ``saved`` (default: the report) is what the saved model carries,
        as a string tf.function (``kiln_report()`` after a reload)."""
        self._kiln_report_json = json.dumps(report, sort_keys=True, default=str)
        saved_json = json.dumps(report if saved is None else saved, sort_keys=True, default=str)
        self.kiln_report = tf.function(
            lambda: tf.constant(saved_json), input_signature=[], autograph=False
        )

    @property
    def report(self) -> dict[str, Any]:
        """The placement report (a fresh JSON-serialisable dict)."""
        return dict(json.loads(self._kiln_report_json))

    @property
    def on_neuron_ratio(self) -> float:
        """Fraction of ops placed on the accelerator (tensorflow-neuron's name)."""
        return float(self.report["on_neuron_ratio"])

    # Nothing here branches on tensors: AutoGraph converting it (as tf_keras does for a
    # subclassed model's call) only costs time on each save.
    @not_autograph
    def call(self, inputs: Any, *args: Any, training: Any = None, **kwargs: Any) -> Any:
        """Run the traced graph on inputs shaped like the example inputs."""
        if args:
            inputs = (inputs, *args)
        if kwargs and self._in_structure.kind == "dict":
            inputs = {**(inputs or {}), **kwargs}
        if self._in_structure.kind == "tuple" and isinstance(inputs, list):
            inputs = tuple(inputs)
        leaves = [
            tf.convert_to_tensor(leaf, dtype_hint=spec.dtype)
            for leaf, spec in zip(
                self._in_structure.flatten(inputs), self._serve.input_signature, strict=True
            )
        ]
        return self._out_structure.pack(list(self._serve(*leaves)))

    def get_config(self) -> dict[str, Any]:
        """Traced models are rebuilt from their SavedModel, not from a config."""
        return {}

    def save(self, filepath: Any, *args: Any, **kwargs: Any) -> None:
        """``tf_keras.Model.save``; a SavedModel written to a directory then gets its wrappers
        of compiled calls compiled too (``serving_jit``: about 100 us less a call)."""
        super().save(filepath, *args, **kwargs)
        if isinstance(filepath, (str, os.PathLike)) and os.path.isdir(filepath):
            compile_wrappers(os.fspath(filepath))


def _runner(serving: ServingGraph) -> Any:
    graph_def = without_feeds(serving.graph_def, serving.fed_names)
    return own_function(
        _make_runner(serving, graph_def),
        input_signature=serving.input_specs,
        autograph=False,
        # A graph that is nothing but one compiled call runs faster compiled whole: it skips
        # the executor around the nested call (measured 0.30 -> 0.21 ms on a small MLP).
        jit_compile=(serving.batch_mode == "dynamic" and only_calls(graph_def)) or None,
    )


def _serve_function(serving: ServingGraph, large: tuple[ServingGraph, int] | None) -> Any:
    """The model's one tf.function; with ``large``, batches of more than its rows run the
    second graph (the placement measured faster at a larger batch)."""
    first = _runner(serving)
    if large is None:
        return first
    second, split = _runner(large[0]), large[1]

    def dispatch(*args: tf.Tensor) -> Any:
        rows = tf.shape(args[serving.batch_arg])[0]
        return tf.cond(rows <= split, lambda: first(*args), lambda: second(*args))

    return own_function(dispatch, input_signature=serving.input_specs, autograph=False)


def _make_runner(serving: ServingGraph, graph_def: Any) -> Any:
    feeds = serving.fed_names
    importer = GraphImporter(graph_def)

    def run_graph(args: list[tf.Tensor]) -> list[tf.Tensor]:
        values = list(args) + [tf.convert_to_tensor(w) for w in serving.weights.values()]
        # tf.identity captures the (eager) handle into the function being built.
        values += [tf.identity(table.resource_handle) for table in serving.tables.values()]
        fed = dict(zip(feeds, values, strict=True))
        # An output that is an input (passed straight through) is not in the imported graph.
        fetched = [o for o in serving.output_names if o not in fed]
        imported = iter(importer(fed, fetched, name="kiln") if fetched else [])
        return [fed[o] if o in fed else next(imported) for o in serving.output_names]

    def run(*args: tf.Tensor) -> list[tf.Tensor]:
        if serving.batch_mode == "pad" and serving.traced_batch:
            return _run_padded(run_graph, list(args), serving)
        if serving.batch_mode == "fixed" and serving.traced_batch and args:
            check = tf.debugging.assert_equal(
                tf.shape(args[serving.batch_arg])[0],
                serving.traced_batch,
                message=f"this model was traced at batch {serving.traced_batch} and its graph "
                "does not allow another; trace with NEURON_CC_FLAGS=--dynamic-batch-size",
            )
            with tf.control_dependencies([check]):
                args = tuple(tf.identity(a) for a in args)
        return [tf.identity(t) for t in run_graph(list(args))]

    return run


def _run_padded(run_graph: Any, args: list[tf.Tensor], serving: ServingGraph) -> list[tf.Tensor]:
    """Pad the batched inputs' axis 0 to a multiple of the traced batch, run chunk by chunk
    (the other inputs whole each time), cut the padding."""
    batch = int(serving.traced_batch or 1)
    rows = tf.shape(args[serving.batch_arg])[0]
    chunks = (rows + batch - 1) // batch
    pad = chunks * batch - rows
    batched = [(i, a, s) for i, (a, s, b) in enumerate(
        zip(args, serving.input_specs, serving.batched, strict=True)) if b]
    split = []
    for _, arg, spec in batched:
        padding = [[0, pad]] + [[0, 0]] * (spec.shape.rank - 1)
        padded = tf.pad(arg, padding)
        split.append(tf.reshape(padded, tf.concat([[chunks, batch], tf.shape(arg)[1:]], 0)))

    def one_chunk(chunk: tuple[tf.Tensor, ...]) -> tuple[tf.Tensor, ...]:
        fixed = [tf.identity(a) for a in args]  # captures the whole ones into the loop body
        for (i, _, spec), part in zip(batched, chunk, strict=True):
            fixed[i] = tf.ensure_shape(part, [batch, *spec.shape[1:]])
        return tuple(run_graph(fixed))

    signature = tuple(tf.TensorSpec([batch, *s.shape[1:]], s.dtype) for s in serving.output_specs)
    outs = tf.map_fn(one_chunk, tuple(split), fn_output_signature=signature)
    results = []
    for out in outs:
        merged = tf.reshape(out, tf.concat([[chunks * batch], tf.shape(out)[2:]], 0))
        results.append(merged[:rows])
    return results


@dataclass(frozen=True)
class Wrapped:
    """The ``wrap`` pass's result: the model, its batch behaviour and what to warn about."""

    model: TracedModel
    batch_mode: str  # "dynamic" | "pad" | "fixed"
    warnings: tuple[str, ...] = ()


def build_model(
    traced: TracedFunction,
    frozen: FrozenGraph,
    graph_def: Any,
    output_names: list[str],
    dynamic_batch_size: bool,
) -> Wrapped:
    """Wrap the rewritten graph; pick ``dynamic``, ``pad`` or ``fixed`` batch behaviour.

    ``dynamic`` when the graph was traced with batch None and gives the same rows at twice the
    example batch; otherwise ``pad`` (split/pad to the traced batch) with --dynamic-batch-size,
    else ``fixed``.
    """
    traced_batch = traced.batch_rows

    def make(mode: str) -> TracedModel:
        serving = _serving(traced, frozen, graph_def, output_names, mode)
        return TracedModel(serving, {"on_neuron_ratio": 0.0})

    if traced.batch_relaxed and traced_batch:
        model = make("dynamic")
        if _rows_consistent(model, traced):
            return Wrapped(model, "dynamic")
    batched_outputs = traced_batch and all(
        r.ndim and r.shape[0] == traced_batch for r in traced.reference_outputs
    )
    if dynamic_batch_size and batched_outputs:
        return Wrapped(make("pad"), "pad")
    if dynamic_batch_size:
        warning = "--dynamic-batch-size: an output has no batch axis; batch is fixed"
        return Wrapped(make("fixed"), "fixed", (warning,))
    return Wrapped(make("fixed"), "fixed")


def _serving(
    traced: TracedFunction, frozen: FrozenGraph, graph_def: Any, output_names: list[str], mode: str
) -> ServingGraph:
    out_specs = tensor_specs(frozen.graph_def, frozen.output_names)
    return ServingGraph(
        graph_def,
        frozen.input_names,
        output_names,
        example_specs(traced.examples, traced.batched),
        [out_specs[n] for n in frozen.output_names],
        traced.input_structure,
        traced.output_structure,
        mode,
        traced.batch_rows,
        dict(frozen.weights),
        dict(frozen.tables),
        traced.batched,
    )


def build_dispatch(
    traced: TracedFunction,
    frozen: FrozenGraph,
    graphs: tuple[Any, Any],
    split_rows: int,
) -> Wrapped:
    """A model taking any batch that runs the first rewritten graph at up to ``split_rows``
    rows and the second above (each is a ``Rewritten``: ``graph_def`` and ``output_names``)."""
    small, large = (
        _serving(traced, frozen, g.graph_def, g.output_names, "dynamic") for g in graphs
    )
    model = TracedModel(small, {"on_neuron_ratio": 0.0}, (large, split_rows))
    return Wrapped(model, "dynamic")


def _rows_consistent(model: TracedModel, traced: TracedFunction) -> bool:
    """Whether the model takes another batch: run at twice the example batch (each row twice,
    :func:`repeat_batch`), every output is what the original gives there.

    Cheaply first: an output with twice the example rows is expected to be the example rows,
    each twice (rows independent of each other, as a batch's are), and only the other outputs (a
    sum over the batch, a size that depends on the values, a constant) are compared with the
    original run at that batch. When that fails, every output is compared with the original run
    there: rows that depend on each other or on the batch size (stateless random draws of the
    batch's shape, attention across the batch, segment sums) are still right at any batch.
    """
    doubled = repeat_batch(traced.examples, traced.batched, 2)
    try:
        outs = traced.output_structure.flatten(model(traced.input_structure.pack(doubled)))
        got = [np.asarray(o) for o in outs]
        for whole in (False, True):
            expected = _expected_at(doubled, traced, got, whole)
            varying = traced.varying or (False,) * len(got)
            if all(
                compare_arrays(want, have, varying=v)["within_tolerance"]
                for want, have, v in zip(expected, got, varying, strict=True)
            ):
                return True
    except Exception as e:  # any failure means "not dynamic"
        logger.debug("dynamic batch check failed: %s", e)
    return False


def _expected_at(
    doubled: list[np.ndarray], traced: TracedFunction, got: list[np.ndarray], whole: bool
) -> list[np.ndarray]:
    """What each output must be on ``doubled``: each reference row twice for an output that got
    twice its rows (unless ``whole``), else the original's output there (run only when needed)."""
    refs = traced.reference_outputs
    twice = [
        not whole and ref.ndim > 0 and have.shape == (2 * ref.shape[0], *ref.shape[1:])
        for ref, have in zip(refs, got, strict=True)
    ]
    original: list[np.ndarray] = []
    if not all(twice):
        args = [tf.constant(x) for x in doubled]
        outs, _ = call_with_xla_fallback(traced.concrete, args, "wrap", in_graph=False)
        original = [np.asarray(t.numpy()) for t in outs]
    return [
        np.repeat(ref, 2, axis=0) if rows else original[i]
        for i, (ref, rows) in enumerate(zip(refs, twice, strict=True))
    ]
