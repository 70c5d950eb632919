"""Benchmark: kiln_worker.trace on the zoo against plain TF, whole-model XLA and auto-clustering.

Run from the repository root (see bench/README.md)::

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python bench/trace_zoo.py            # all models
    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python bench/trace_zoo.py --quick    # fewer reps, no ResNet50

Phases:

1. prepare: one subprocess per model builds it (bench/zoo.py), saves the original SavedModel,
   traces it with ``kiln_worker.trace`` at batch 1 (timed), checks the traced model at the other
   batch sizes and saves it (a fresh process per model bounds memory: ResNet50 peaks ~2.7 GB).
2. time: two long-lived worker subprocesses load every SavedModel: ``plain`` serves the
   original signature, the whole-model ``jit_compile=True`` wrapper and the traced signature;
   ``autojit`` (started with ``TF_XLA_FLAGS=--tf_xla_auto_jit=2 --tf_xla_cpu_global_jit``,
   which TensorFlow reads once per process) serves the original signature under auto-clustering.
   Repetitions are interleaved round-robin: per repetition, per model and batch, every variant
   runs one timed block (rotating the order), so all variants see the same machine speed.
   The figure per cell is the median over repetitions of the block's mean latency.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VARIANTS = ("original", "xla", "autoclust", "traced")
AUTOJIT_FLAGS = "--tf_xla_auto_jit=2 --tf_xla_cpu_global_jit"
# Two runs of the very same model differ by a few percent here even when interleaved; a gap
# smaller than this is reported as a tie, not as a miss.
NOISE = 0.03


# ---------------------------------------------------------------------------------------------
# Phase 1: prepare one model (runs in its own process)


def prepare(name: str, out: Path, batches: list[int]) -> dict[str, Any]:
    """Build, save, trace (timed), check and save one zoo model; returns a JSON-able summary."""
    sys.path.insert(0, str(HERE.parent))
    from bench.zoo import ZOO, compare_outputs

    import kiln_worker

    entry = ZOO[name]
    model = entry.build()
    model.save(str(out / "original"))
    example = entry.make_inputs(1, 0)
    started = time.perf_counter()
    traced = kiln_worker.trace(model, example)
    trace_seconds = time.perf_counter() - started
    report = traced.report
    summary: dict[str, Any] = {
        "trace_seconds": trace_seconds,
        "on_neuron_ratio": float(traced.on_neuron_ratio),
        "compiled_subgraphs": sum(s.get("status") == "compiled" for s in report.get("subgraphs", [])),
        "retraced_batches": [],
        "checks": {},
    }
    traced.save(str(out / "traced"))
    for batch in batches:
        inputs = entry.make_inputs(batch, batch)
        expected = model(inputs, training=False)
        try:
            diff, magnitude = compare_outputs(expected, traced(inputs))
            ok = diff <= 1e-3 * magnitude
        except Exception as err:  # a batch the traced model cannot take: trace at that size
            diff, magnitude, ok = math.nan, math.nan, False
            summary["checks"][f"error_b{batch}"] = f"{type(err).__name__}: {err}"[:300]
        if not ok and batch != 1:
            retraced = kiln_worker.trace(model, inputs)
            retraced.save(str(out / f"traced_b{batch}"))
            summary["retraced_batches"].append(batch)
        summary["checks"][f"b{batch}"] = {"max_abs_diff": diff, "max_abs_output": magnitude, "ok": ok}
    return summary


# ---------------------------------------------------------------------------------------------
# Phase 2: the timing worker (runs in its own process, driven by JSON lines on stdin)


def serve(root: Path, models: list[str], batches: list[int], autojit: bool) -> None:
    """Load the SavedModels, warm every variant up, then answer timing requests on stdin."""
    sys.path.insert(0, str(HERE.parent))
    import tensorflow as tf
    from bench.zoo import ZOO

    variants = ("autoclust",) if autojit else ("original", "xla", "traced")
    loaded: dict[Path, Any] = {}

    def signature(path: Path) -> Any:
        if path not in loaded:  # keep the loaded object alive: the signature refers to it
            loaded[path] = tf.saved_model.load(str(path))
        return loaded[path].signatures["serving_default"]

    calls: dict[tuple[str, str, int], Any] = {}
    errors: dict[tuple[str, str, int], str] = {}
    for name in models:
        original = signature(root / name / "original")
        funcs = {"original": original, "autoclust": original}
        for batch in batches:
            funcs["xla"] = _jit_wrapper(tf, original)  # one per shape: no retracing warnings
            retraced = root / name / f"traced_b{batch}"
            funcs["traced"] = signature(retraced if retraced.exists() else root / name / "traced")
            for variant in variants:
                key = (name, variant, batch)
                try:
                    source = original if variant == "xla" else funcs[variant]
                    (arg,) = source.structured_input_signature[1]
                    feed = {arg: tf.constant(ZOO[name].make_inputs(batch, 7))}
                    for _ in range(3):  # compile (XLA) and warm caches
                        funcs[variant](**feed)
                    calls[key] = (funcs[variant], feed)
                except Exception as err:
                    errors[key] = f"{type(err).__name__}: {err}".splitlines()[0][:200]
    _reply({"ready": True})
    blocks: dict[tuple[str, str, int], int] = {}
    for line in sys.stdin:
        request = json.loads(line)
        key = (request["model"], request["variant"], request["batch"])
        if key in errors:
            _reply({"error": errors[key]})
            continue
        func, feed = calls[key]
        if key not in blocks:  # calibrate once: enough calls to fill the block duration
            started = time.perf_counter()
            func(**feed)
            one = time.perf_counter() - started
            blocks[key] = max(1, min(10_000, round(request["seconds"] / max(one, 1e-6))))
        count = blocks[key]
        started = time.perf_counter()
        for _ in range(count):
            func(**feed)
        _reply({"latency": (time.perf_counter() - started) / count, "calls": count})


def _jit_wrapper(tf: Any, signature: Any) -> Any:
    """Whole-model XLA: the original serving signature inside one ``jit_compile=True`` function."""

    @tf.function(jit_compile=True)
    def whole_model(**inputs: Any) -> Any:
        return signature(**inputs)

    return whole_model


def _reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class Worker:
    """One timing subprocess, spoken to in JSON lines."""

    def __init__(self, root: Path, models: list[str], batches: list[int], autojit: bool) -> None:
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env.pop("TF_XLA_FLAGS", None)
        if autojit:
            env["TF_XLA_FLAGS"] = AUTOJIT_FLAGS
        command = [sys.executable, __file__, "--serve", str(root), "--models", ",".join(models),
                   "--batches", ",".join(map(str, batches))] + (["--autojit"] if autojit else [])
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env=env)
        self.ask_raw(None)

    def ask_raw(self, request: dict[str, Any] | None) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        if request is not None:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"timing worker {self.process.pid} exited ({self.process.wait()})")
        return dict(json.loads(line))

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=60)


# ---------------------------------------------------------------------------------------------
# Orchestration and the table


def run_prepare(name: str, out: Path, batches: list[int]) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.pop("TF_XLA_FLAGS", None)
    command = [sys.executable, __file__, "--prepare", name, "--out", str(out),
               "--batches", ",".join(map(str, batches))]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        return {"error": f"prepare failed (exit {done.returncode}):\n{tail}"}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def measure(root: Path, models: list[str], batches: list[int], reps: int,
            seconds: float) -> dict[tuple[str, str, int], list[float] | str]:
    """Interleaved timing: every repetition visits every (model, batch) and every variant."""
    plain = Worker(root, models, batches, autojit=False)
    auto = Worker(root, models, batches, autojit=True)
    results: dict[tuple[str, str, int], list[float] | str] = {}
    try:
        for rep in range(reps):
            for name in models:
                for batch in batches:
                    order = VARIANTS[rep % 4:] + VARIANTS[: rep % 4]
                    for variant in order:
                        worker = auto if variant == "autoclust" else plain
                        answer = worker.ask_raw({"model": name, "variant": variant,
                                                 "batch": batch, "seconds": seconds})
                        key = (name, variant, batch)
                        if "error" in answer:
                            results[key] = str(answer["error"])
                        else:
                            cell = results.setdefault(key, [])
                            if isinstance(cell, list):
                                cell.append(float(answer["latency"]))
            print(f"  repetition {rep + 1}/{reps} done", file=sys.stderr, flush=True)
    finally:
        plain.close()
        auto.close()
    return results


def _median_ms(cell: list[float] | str | None) -> float | None:
    return statistics.median(cell) * 1e3 if isinstance(cell, list) and cell else None


def print_table(models: list[str], batches: list[int], prepared: dict[str, dict[str, Any]],
                results: dict[tuple[str, str, int], list[float] | str]) -> None:
    """Print one table per batch size, the geometric mean at batch 1 and the target verdicts."""
    speedups_b1: list[float] = []
    misses: list[str] = []
    for batch in batches:
        print(f"\nbatch {batch}: median latency in ms (speed-up vs original)")
        print(f"{'model':<13}{'trace s':>8}{'ratio':>7}{'original':>10}{'xla':>17}"
              f"{'autoclust':>17}{'traced':>17}  verdict")
        for name in models:
            info = prepared[name]
            if "error" in info:
                print(f"{name:<13} PREPARE FAILED (see below)")
                continue
            ms = {v: _median_ms(results.get((name, v, batch))) for v in VARIANTS}
            base = ms["original"]
            cells = [f"{'n/a' if base is None else f'{base:.3f}':>10}"]
            for variant in VARIANTS[1:]:
                value = ms[variant]
                text = "error" if value is None else (
                    f"{value:.3f} ({base / value:.2f}x)" if base else f"{value:.3f}")
                cells.append(f"{text:>17}")
            verdict = _verdict(name, batch, ms, misses)
            if batch == 1 and base and ms["traced"]:
                speedups_b1.append(base / ms["traced"])
            star = "*" if batch in info.get("retraced_batches", []) else " "
            print(f"{name:<13}{info['trace_seconds']:>8.1f}{info['on_neuron_ratio']:>7.2f}"
                  + "".join(cells) + f"{star} {verdict}")
    if speedups_b1:
        geomean = math.exp(sum(map(math.log, speedups_b1)) / len(speedups_b1))
        status = "MET" if geomean >= 1.3 else "MISSED"
        print(f"\ngeometric mean speed-up of traced vs original at batch 1: {geomean:.2f}x "
              f"(target >= 1.30x: {status})")
    _print_notes(models, prepared, results, misses)


def _verdict(name: str, batch: int, ms: dict[str, float | None], misses: list[str]) -> str:
    traced, base = ms["traced"], ms["original"]
    if traced is None or base is None:
        misses.append(f"{name} b{batch}: no traced/original figure")
        return "MISS (no figure)"
    problems = []
    if traced > base * (1 + NOISE):
        problems.append("slower than original")
    rivals = [v for v in (ms["xla"], ms["autoclust"]) if v is not None]
    if rivals and traced > min(rivals) * (1 + NOISE):
        problems.append(f"slower than best XLA rival ({min(rivals):.3f} ms)")
    for problem in problems:
        misses.append(f"{name} b{batch}: {problem}")
    return "ok" if not problems else "MISS: " + "; ".join(problems)


def _print_notes(models: list[str], prepared: dict[str, dict[str, Any]],
                 results: dict[tuple[str, str, int], list[float] | str], misses: list[str]) -> None:
    print("\nratio = traced model's on_neuron_ratio; * = traced again at that batch size "
          f"(the batch-1 trace did not serve it); gaps under {NOISE:.0%} count as ties")
    for name in models:
        info = prepared[name]
        if "error" in info:
            print(f"- {name}: {info['error']}")
            continue
        failed = {k: v for k, v in info["checks"].items() if isinstance(v, dict) and not v["ok"]}
        if failed or any(k.startswith("error") for k in info["checks"]):
            print(f"- {name}: output check failed: {json.dumps(info['checks'])}")
    for (name, variant, batch), cell in sorted(results.items()):
        if isinstance(cell, str):
            print(f"- {name} {variant} b{batch}: {cell}")
    print("targets: " + ("all met" if not misses else f"{len(misses)} missed: " + "; ".join(misses)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma-separated subset of: mlp,mobilenet_v2,"
                        "resnet50,lstm,bert (default all; --quick leaves out resnet50)")
    parser.add_argument("--reps", type=int, help="interleaved repetitions (default 7, quick 3)")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repetitions")
    parser.add_argument("--batches", default="1,8", help="batch sizes (default 1,8)")
    parser.add_argument("--keep", type=Path, help="keep the SavedModels under this directory")
    parser.add_argument("--prepare", help=argparse.SUPPRESS)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--autojit", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    default = "mlp,mobilenet_v2,lstm,bert" if args.quick else "mlp,mobilenet_v2,resnet50,lstm,bert"
    models = (args.models or default).split(",")
    if args.prepare:
        print(json.dumps(prepare(args.prepare, args.out, batches)))
        return 0
    if args.serve:
        serve(args.serve, models, batches, args.autojit)
        return 0
    known = {"mlp", "mobilenet_v2", "resnet50", "lstm", "bert"}
    if unknown := [m for m in models if m not in known]:
        parser.error(f"unknown model(s) {unknown}; choose from {sorted(known)}")
    reps = args.reps or (3 if args.quick else 7)
    seconds = 0.1 if args.quick else 0.25
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as scratch:
        root = args.keep or Path(scratch)
        prepared = {}
        for name in models:
            print(f"preparing {name} ...", file=sys.stderr, flush=True)
            prepared[name] = run_prepare(name, root / name, batches)
        ready = [m for m in models if "error" not in prepared[m]]
        print(f"timing {ready}: {reps} interleaved repetitions", file=sys.stderr, flush=True)
        results = measure(root, ready, batches, reps, seconds) if ready else {}
        print(f"kiln trace_zoo  python {sys.version.split()[0]}  cpus {os.cpu_count()}  "
              f"reps {reps}  block {seconds}s  {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
        print_table(models, batches, prepared, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
