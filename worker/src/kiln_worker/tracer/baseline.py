"""What a whole-model candidate of measured placement is timed against, and how it is called.

A candidate is judged against the faster of the original function and the frozen graph without
compiled subgraphs (:func:`baseline_for`); every side is called as a concrete function on flat
tensors (:func:`flat_call`), as a reloaded signature is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple, cast

from kiln_worker.tracer.inputs import TracedFunction
from kiln_worker.tracer.measure import WHOLE_MODEL, Measurement, compare
from kiln_worker.tracer.reference import first_line
from kiln_worker.tracer.timing_cache import TimingCache, store_for
from kiln_worker.tracer.wrap import Wrapped

logger = logging.getLogger(__name__)

__all__ = ["FROZEN", "ORIGINAL", "Baseline", "against", "baseline_for", "flat_call"]

#: What the report calls the two versions a whole-model candidate can be timed against.
ORIGINAL, FROZEN = "the original", "the frozen graph without compiled subgraphs"


class Baseline(NamedTuple):
    """What a whole-model candidate is timed against: a callable on the flat inputs, its graph
    (for the timing cache's key), what the report calls it and, when both could run, the
    frozen graph's timing against the original that chose it."""

    call: Callable[..., Any]
    graph_def: Any
    label: str
    frozen_vs_original: Measurement | None = None


def baseline_for(traced: TracedFunction, plain: Wrapped, plain_graph: Any, args: list[Any],
                 timings: TimingCache | None = None) -> Baseline:
    """The faster, on ``args``, of the original function (as the user's model runs: variables
    read) and the frozen graph without compiled subgraphs (which serves when no candidate is
    kept). Either can be the faster: freezing folds constants (ResNet50's batch norms: 20%
    faster at batch 1), yet a frozen graph can also run slower than its original; a candidate
    is kept only when it is not clearly slower than the faster one.
    When TensorFlow's kernels cannot run the original (or it fails on ``args``), the frozen
    graph is the baseline. ``plain`` is the frozen graph's model, ``plain_graph`` its graph."""
    frozen = Baseline(flat_call(plain), plain_graph, FROZEN)
    if traced.reference_source != "tensorflow":
        return frozen
    original = traced.concrete.graph.as_graph_def()
    store = store_for(timings, "baseline", [frozen.graph_def, original], args,
                      [plain.batch_mode])
    try:
        timing = compare(frozen.call, traced.concrete, args, rule=WHOLE_MODEL, store=store)
    except Exception as e:  # e.g. an original fixed to its example batch, timed at 8x it
        logger.info("measure: the original does not run here (%s); timed against the frozen "
                    "graph", first_line(e))
        return frozen
    if timing.speedup >= 1.0:
        return frozen._replace(frozen_vs_original=timing)
    return Baseline(traced.concrete, original, ORIGINAL, timing)


def flat_call(wrapped: Wrapped) -> Callable[..., Any]:
    """The model's serving function as a concrete function on flat tensors, as the original
    and a reloaded signature are called: the tf.function's own argument handling costs ~90 us a
    call (a fifth of a 0.4 ms CNN), which would count against every candidate."""
    return cast(Callable[..., Any], wrapped.model._serve.get_concrete_function())


def against(baseline: Baseline) -> dict[str, Any]:
    """A whole-model record's account of its baseline: which, and how the two compared."""
    timing = baseline.frozen_vs_original
    return {"against": baseline.label,
            "frozen_vs_original": None if timing is None else timing.as_dict()}
