"""The compiled model against the original, in the compile child: outputs and speed.

:func:`run_model` gives a signature's outputs as named arrays (the original's are the
reference); :func:`check_reloaded` reloads the saved compiled model and compares its outputs
with them; :func:`measure_compiled_speed` times both serving.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from kiln_client.codes import FailureCode
from kiln_worker._failures import JobError, classify_model_exception

__all__ = ["check_reloaded", "measure_compiled_speed", "run_model"]

logger = logging.getLogger(__name__)


def run_model(
    tf: Any, fn: Any, inputs: dict[str, Any], what: str
) -> tuple[dict[str, Any], str | None]:
    """The outputs of ``fn(**inputs)`` as named arrays, and why XLA computed them (or ``None``:
    TensorFlow ran it; XLA compiles it whole when TensorFlow's CPU kernels cannot run it)."""
    from kiln_worker.tracer.reference import call_with_xla_fallback

    try:
        outputs, reason = call_with_xla_fallback(lambda: fn(**inputs), [], "loading", in_graph=False)
    except Exception as exc:
        failure = classify_model_exception(exc, what)
        if failure is None:
            raise
        raise JobError(failure.code, failure.message) from exc
    if not isinstance(outputs, dict):
        flat = tf.nest.flatten(outputs)
        outputs = {f"output_{i}": t for i, t in enumerate(flat)}
    return {name: value.numpy() for name, value in outputs.items()}, reason


def measure_compiled_speed(fn: Any, reloaded: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """Original vs. reloaded compiled serving latency (see ``_speed``); never fails the job."""
    from kiln_worker._speed import measure_speed

    try:
        serving = reloaded.signatures["serving_default"]

        def compiled(**kwargs: Any) -> Any:
            return serving(**_rename_inputs(serving, kwargs))

        return measure_speed(fn, compiled, inputs)
    except Exception as exc:  # a measurement problem is reported, not a failed compile
        summary = (str(exc).strip() or type(exc).__name__).splitlines()[0][:300]
        logger.warning("speed measurement failed: %s", summary)
        return {"error": summary, "batches": {}}


def check_reloaded(
    tf: Any, compiled_dir: Path, inputs: dict[str, Any], expected: dict[str, Any],
    varying: set[str] | frozenset[str] = frozenset(),
) -> tuple[dict[str, Any], Any]:
    """Compare the reloaded compiled model's outputs with the original's, per output dtype (the
    ``varying`` ones, random draws, by shape and dtype); return the summary and the reloaded
    model (the speed measurement serves it next)."""
    from kiln_worker.tracer.tolerance import compare_arrays, summarise

    try:
        reloaded = tf.saved_model.load(str(compiled_dir))
        serving = reloaded.signatures["serving_default"]
        actual, _ = run_model(tf, serving, _rename_inputs(serving, inputs), "reload")
    except (JobError, KeyError) as exc:
        raise JobError(
            FailureCode.VERIFICATION_FAILED,
            f"the compiled model does not run after saving and reloading: {exc}",
        ) from exc
    pairs = _pair_outputs(expected, actual)
    entries = {name: compare_arrays(want, got, varying=name in varying)
               for name, (want, got) in pairs.items()}
    for name, entry in entries.items():
        if "shape" in entry:
            before, after = entry["shape"]
            raise JobError(
                FailureCode.VERIFICATION_FAILED,
                f"output {name!r} has shape {after} after compiling, {before} before",
            )
    return summarise(entries), reloaded


def _rename_inputs(fn: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """The inputs keyed as ``fn`` names them (by sorted position if it renamed them)."""
    names = sorted(fn.structured_input_signature[1])
    if set(names) == set(inputs) or len(names) != len(inputs):
        return inputs
    return {new: inputs[old] for new, old in zip(names, sorted(inputs), strict=True)}


def _pair_outputs(expected: dict[str, Any], actual: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Match outputs by name, or by sorted position when the compiled model renamed them."""
    if set(expected) == set(actual):
        return {name: (expected[name], actual[name]) for name in sorted(expected)}
    if len(expected) != len(actual):
        raise JobError(
            FailureCode.VERIFICATION_FAILED,
            f"the compiled model has outputs {sorted(actual)}, the original {sorted(expected)}",
        )
    return {
        name: (expected[name], actual[other])
        for name, other in zip(sorted(expected), sorted(actual), strict=True)
    }
