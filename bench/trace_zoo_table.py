"""The table of bench/trace_zoo.py: latencies per batch size, geometric means and verdicts.

Kept apart from the timing so that each module stays short; ``print_table`` is its entry point.
"""

from __future__ import annotations

import json
import math
import statistics
from typing import Any

VARIANTS = ("original", "xla", "autoclust", "traced", "traced_all")
#: The traced variants and their ``placement`` (``None``: the default, ``measured``).
PLACEMENTS = {"traced": None, "traced_all": "all"}
# Two runs of the very same model differ by a few percent here even when interleaved; a gap
# smaller than this (or than the measured spread, when larger) is reported as a tie, not a miss.
NOISE = 0.03
#: Issue 9: geometric mean speed-up over plain TF of the default placement, at batch 1 and 8.
GEOMEAN_TARGET = 1.5
Results = dict[tuple[str, str, int], "list[float] | str"]


def _median_ms(cell: list[float] | str | None) -> float | None:
    return statistics.median(cell) * 1e3 if isinstance(cell, list) and cell else None


def _paired(results: Results, name: str, batch: int, variant: str, other: str) -> tuple[float, float]:
    """Median over repetitions of ``variant / other`` latency (same repetition: same machine
    speed), and the noise of that ratio (median absolute deviation, at least ``NOISE``)."""
    mine, theirs = results.get((name, variant, batch)), results.get((name, other, batch))
    if not (isinstance(mine, list) and isinstance(theirs, list)):
        return math.nan, NOISE
    ratios = [a / b for a, b in zip(mine, theirs, strict=False)]
    middle = statistics.median(ratios)
    return middle, max(NOISE, statistics.median(abs(r - middle) for r in ratios))


def _cell(value: float | None, base: float | None) -> str:
    if value is None:
        return f"{'error':>16}"
    return f"{f'{value:.3f} ({base / value:.2f}x)' if base else f'{value:.3f}':>16}"


def print_table(models: list[str], batches: list[int], prepared: dict[str, dict[str, Any]],
                results: Results) -> None:
    """One table per batch size, geometric means over plain TF per batch, and the verdicts."""
    misses: list[str] = []
    speedups: dict[tuple[str, int], list[float]] = {}
    for batch in batches:
        print(f"\nbatch {batch}: median latency in ms (speed-up vs original)")
        print(f"{'model':<12}{'trace s':>8}{'ratio':>6}{'all':>5}{'original':>9}{'xla':>16}"
              f"{'autoclust':>16}{'traced':>16}{'traced all':>16}  verdict")
        for name in models:
            info = prepared[name]
            if "error" in info:
                print(f"{name:<12} PREPARE FAILED (see below)")
                continue
            ms = {v: _median_ms(results.get((name, v, batch))) for v in VARIANTS}
            base = ms["original"]
            for variant in PLACEMENTS:
                if base and ms[variant]:
                    speedups.setdefault((variant, batch), []).append(base / ms[variant])
            star = "*" if batch in info["traced"]["retraced_batches"] else " "
            print(f"{name:<12}{info['traced']['trace_seconds']:>8.1f}"
                  f"{info['traced']['on_neuron_ratio']:>6.2f}{info['traced_all']['on_neuron_ratio']:>5.2f}"
                  f"{'n/a' if base is None else f'{base:.3f}':>9}"
                  + "".join(_cell(ms[v], base) for v in VARIANTS[1:])
                  + f"{star} {_verdict(name, batch, ms, results, misses)}")
    print()
    for batch in batches:
        for variant in PLACEMENTS:
            values = speedups.get((variant, batch), [])
            if not values:
                continue
            geomean = math.exp(sum(map(math.log, values)) / len(values))
            label = "default (measured)" if variant == "traced" else "KILN_PLACEMENT=all"
            verdict = ""
            if variant == "traced":
                verdict = f" (target >= {GEOMEAN_TARGET:.2f}x: " + (
                    "MET)" if geomean >= GEOMEAN_TARGET else "MISSED)")
                if geomean < GEOMEAN_TARGET:
                    misses.append(f"geomean b{batch} {geomean:.2f}x")
            print(f"geometric mean speed-up over plain TF, batch {batch}, {label}: {geomean:.2f}x "
                  f"over {len(values)} models{verdict}")
    _print_notes(models, prepared, results, misses)


def _verdict(name: str, batch: int, ms: dict[str, float | None], results: Results,
             misses: list[str]) -> str:
    if ms["traced"] is None or ms["original"] is None:
        misses.append(f"{name} b{batch}: no traced/original figure")
        return "MISS (no figure)"
    problems = []
    ratio, noise = _paired(results, name, batch, "traced", "original")
    if ratio > 1 + noise:
        problems.append(f"{ratio:.2f}x the original's time (noise {noise:.0%})")
    rivals = {v: ms[v] for v in ("xla", "autoclust") if ms[v] is not None}
    if rivals:
        best = min(rivals, key=lambda v: rivals[v] or math.inf)
        ratio, noise = _paired(results, name, batch, "traced", best)
        if ratio > 1 + noise:
            problems.append(f"{ratio:.2f}x the time of {best} (noise {noise:.0%})")
    misses.extend(f"{name} b{batch}: {problem}" for problem in problems)
    return "ok" if not problems else "MISS: " + "; ".join(problems)


def _print_notes(models: list[str], prepared: dict[str, dict[str, Any]], results: Results,
                 misses: list[str]) -> None:
    print("\nratio / all = on_neuron_ratio of the default and of the placement=all trace; "
          "* = traced again at that batch size (the batch-1 trace did not serve it). A verdict "
          "compares, repetition by repetition, the traced model with the original and with the "
          f"faster of xla and autoclust: a median ratio within its noise (at least {NOISE:.0%}) "
          "is a tie.")
    for name in models:
        info = prepared[name]
        if "error" in info:
            print(f"- {name}: {info['error']}")
            continue
        for variant in PLACEMENTS:
            checks = info[variant]["checks"]
            failed = {k: v for k, v in checks.items() if isinstance(v, dict) and not v["ok"]}
            if failed or any(k.startswith("error") for k in checks):
                print(f"- {name} {variant}: output check failed: {json.dumps(checks)}")
        decisions = info["traced"]["measured"]
        placement = info["traced"].get("placement") or {}
        keys = ("batch", "candidate", "speedup", "noise", "decision")
        whole = [{k: w.get(k) for k in keys} for w in placement.get("whole_model", [])]
        print(f"- {name}: measured placement (subgraph, status, speed-up at the example batch "
              f"and at 8x it, batches): {decisions}; whole model {json.dumps(whole)}; "
              f"split at rows {placement.get('split_rows')}")
    for (name, variant, batch), cell in sorted(results.items()):
        if isinstance(cell, str):
            print(f"- {name} {variant} b{batch}: {cell}")
    print("targets: " + ("all met" if not misses else f"{len(misses)} missed: " + "; ".join(misses)))
