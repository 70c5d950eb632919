"""How close a traced model's outputs must be to the original's: one rule per output dtype.

Floating outputs may differ by a tolerance relative to the reference's largest magnitude (at
least 1), looser for 16-bit types, whose few mantissa bits make XLA's fusion order and TensorFlow's
kernels round differently; integer, bool and string outputs must be equal. The tracer's
``verify`` pass and the compile child's check of the reloaded model both use :func:`compare_arrays`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "GROSS_FACTOR",
    "RELATIVE_TOLERANCE",
    "compare_arrays",
    "gross_mismatch",
    "nondeterministic_outputs",
    "same_values",
    "summarise",
]

#: Relative tolerance per floating dtype. float32: oneDNN fusions on frozen graphs were measured
#: to move a BERT-like encoder by about 7e-4. float16 has 11 significant bits (eps 1e-3),
#: bfloat16 8 (eps 8e-3): a few roundings in a different order stay within these.
RELATIVE_TOLERANCE = {"float64": 1e-3, "float32": 1e-3, "float16": 1e-2, "bfloat16": 5e-2}
#: A compiled subgraph's output is *grossly* off beyond this many times its dtype's tolerance
#: (rounding in another order stays far below; another algorithm's answer, such as eigenvectors
#: of another sign, does not)
GROSS_FACTOR = 10.0


def _dtype_name(array: np.ndarray) -> str:
    return "string" if array.dtype.kind in "OSU" else str(array.dtype.name)


def _is_floating(array: np.ndarray) -> bool:
    return array.dtype.kind in "fc" or _dtype_name(array) == "bfloat16"


def compare_arrays(reference: Any, actual: Any, *, varying: bool = False) -> dict[str, Any]:
    """Compare one output with its reference.

    Args:
        reference: the original's output.
        actual: the traced model's.
        varying: the original gives another value at each call (random draws): only the shape
            and dtype can be compared (the entry says ``"nondeterministic": true``).

    Returns:
        ``{"dtype", "max_abs_diff", "max_abs_output", "relative_tolerance", "within_tolerance"}``
        (``relative_tolerance`` is 0 for outputs that must be equal).
    """
    ref, got = np.asarray(reference), np.asarray(actual)
    name = _dtype_name(ref)
    entry: dict[str, Any] = {"dtype": name, "max_abs_diff": 0.0, "max_abs_output": 0.0}
    entry["relative_tolerance"] = RELATIVE_TOLERANCE.get(name, 1e-3) if _is_floating(ref) else 0.0
    if ref.shape != got.shape:
        entry.update(within_tolerance=False, shape=[list(ref.shape), list(got.shape)])
        return entry
    if varying:
        entry.update(within_tolerance=_dtype_name(got) == name, nondeterministic=True)
        return entry
    if name == "string" or ref.dtype.kind == "b":
        entry["within_tolerance"] = bool(np.array_equal(ref, got))
        return entry
    # complex outputs (an FFT's) are compared as complex numbers, not by their real parts
    wide = np.complex128 if ref.dtype.kind == "c" else np.float64
    want, have = ref.astype(wide), got.astype(wide)
    both_nan = np.isnan(want) & np.isnan(have)
    diff = np.where(both_nan, 0.0, np.abs(want - have))
    finite = np.abs(want[np.isfinite(want)])
    entry["max_abs_diff"] = float(np.max(diff, initial=0.0))
    entry["max_abs_output"] = float(np.max(finite, initial=0.0))
    limit = entry["relative_tolerance"] * max(entry["max_abs_output"], 1.0)
    entry["within_tolerance"] = bool(entry["max_abs_diff"] <= limit)
    return entry


def summarise(entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The worst of several outputs' comparisons (output name → entry), each kept in ``outputs``."""
    values = list(entries.values())
    return {
        "max_abs_diff": max((e["max_abs_diff"] for e in values), default=0.0),
        "max_abs_output": max((e["max_abs_output"] for e in values), default=0.0),
        "within_tolerance": all(e["within_tolerance"] for e in values),
        "outputs": entries,
    }


def same_values(first: Any, second: Any) -> bool:
    """Whether two runs gave exactly the same output (NaNs in the same places count as equal)."""
    a, b = np.asarray(first), np.asarray(second)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))


def nondeterministic_outputs(check: dict[str, Any] | None) -> set[str]:
    """The outputs a :func:`summarise`-d check compared by shape only (random draws)."""
    outputs = (check or {}).get("outputs") or {}
    return {name for name, entry in outputs.items() if entry.get("nondeterministic")}


def gross_mismatch(
    expected: list[Any], runs: tuple[list[Any], list[Any]], names: list[str]
) -> str | None:
    """The first output, of two runs of a compiled subgraph, that is grossly off its ``expected``
    value (``GROSS_FACTOR`` times its tolerance), described; ``None`` when none is. Outputs that
    differ between the two runs (random draws) are not judged."""
    first, second = runs
    for name, want, a, b in zip(names, expected, first, second, strict=True):
        if not same_values(a, b):
            continue
        entry = compare_arrays(want, a)
        if "shape" in entry:
            return f"{name}: shape {entry['shape'][1]}, TensorFlow's {entry['shape'][0]}"
        rtol = entry["relative_tolerance"]
        if rtol:
            off = entry["max_abs_diff"] > GROSS_FACTOR * rtol * max(entry["max_abs_output"], 1.0)
        else:  # integers, bools, strings: equal or off
            off = not entry["within_tolerance"]
        if off:
            return (f"{name}: max abs diff {entry['max_abs_diff']:.3g} "
                    f"(largest value {entry['max_abs_output']:.3g})")
    return None
