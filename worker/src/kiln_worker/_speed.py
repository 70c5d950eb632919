"""How much faster the compiled model serves than the original, measured in the compile child.

Both serving signatures run on the same inputs, their repetitions interleaved (original, compiled,
compiled, original, ...) so a change in the machine's speed during the measurement hits both
alike; each side's figure is the median. Measured at batch 1 and at the example inputs' batch.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["measure_speed"]

#: repetitions per side: at least this many, more while under the time budget
MIN_REPEATS, MAX_REPEATS = 5, 20
#: seconds of timing per batch size, both sides together (after warm-up)
BUDGET_SECONDS = 0.5


def _batch_of(inputs: Mapping[str, Any], size: int, example: int) -> dict[str, Any]:
    """The inputs cut to the first ``size`` rows; a scalar, or a side input whose axis 0 is not
    the example batch (a weight matrix), is passed whole."""
    cut = {}
    for name, value in inputs.items():
        shape: tuple[int, ...] = tuple(getattr(value, "shape", ()))
        cut[name] = value[:size] if shape and shape[0] == example else value
    return cut


def _time_once(fn: Callable[..., Any], inputs: Mapping[str, Any]) -> float:
    start = time.perf_counter()
    outputs = fn(**inputs)
    for value in outputs.values():  # make sure the work is done, not only scheduled
        value.numpy()
    return time.perf_counter() - start


def _interleaved(original: Callable[..., Any], compiled: Callable[..., Any],
                 inputs: Mapping[str, Any]) -> dict[str, Any]:
    for fn in (original, compiled, original, compiled):  # warm-up: tracing and XLA compiles
        _time_once(fn, inputs)
    first: list[float] = []
    second: list[float] = []
    deadline = time.perf_counter() + BUDGET_SECONDS
    while len(first) < MAX_REPEATS and (len(first) < MIN_REPEATS or time.perf_counter() < deadline):
        pair = (original, compiled) if len(first) % 2 == 0 else (compiled, original)
        times = {id(fn): _time_once(fn, inputs) for fn in pair}
        first.append(times[id(original)])
        second.append(times[id(compiled)])
    original_ms = statistics.median(first) * 1e3
    compiled_ms = statistics.median(second) * 1e3
    return {"original_ms": round(original_ms, 4), "compiled_ms": round(compiled_ms, 4),
            "speedup": round(original_ms / compiled_ms, 3) if compiled_ms > 0 else None,
            "repetitions": len(first)}


def measure_speed(original: Callable[..., Any], compiled: Callable[..., Any],
                  inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Latencies of both signatures at batch 1 and at the example batch, interleaved.

    Args:
        original: the uploaded model's serving signature (keyword tensors in, dict out).
        compiled: the reloaded compiled model's serving signature, with the same input names.
        inputs: the example inputs, keyed by input name.

    Returns:
        ``{"method", "batches": {"1": {...}, "<n>": {...}}}``; each entry holds
        ``original_ms``, ``compiled_ms``, ``speedup`` (median over interleaved repetitions) or
        ``error`` when that batch could not be run (e.g. a fixed batch size).
    """
    import tensorflow as tf

    batches: dict[str, Any] = {}
    leading = [int(v.shape[0]) for v in inputs.values() if len(v.shape) > 0]
    example = leading[0] if leading else 0  # the first input with an axis, as the tracer
    for size in sorted({1, example}) if example else []:
        cut = inputs if size == example else _batch_of(inputs, size, example)
        tensors = {k: tf.constant(v) for k, v in cut.items()}
        try:
            batches[str(size)] = _interleaved(original, compiled, tensors)
        except (tf.errors.OpError, ValueError, TypeError) as exc:
            batches[str(size)] = {"error": str(exc).strip().splitlines()[0][:300]}
    return {"method": "median of interleaved repetitions, after warm-up", "batches": batches}
