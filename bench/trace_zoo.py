"""Benchmark: kiln_worker.trace on the zoo against plain TF, whole-model XLA and auto-clustering.

Run from the repository root (see bench/README.md)::

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python bench/trace_zoo.py            # all models
    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python bench/trace_zoo.py --quick    # fewer reps, no ResNet50

Phases:

1. prepare: one subprocess per model builds it (bench/zoo.py ``BENCH_ZOO``), saves the original
   SavedModel, traces it with ``kiln_worker.trace`` at batch 1 (timed) twice, with the default
   placement (``traced``: measured) and with ``placement="all"`` (``traced_all``), checks both at
   the other batch sizes and saves them (a fresh process per model bounds memory).
2. time: two long-lived worker subprocesses load every SavedModel: ``plain`` serves the
   original signature, the whole-model ``jit_compile=True`` wrapper and both traced signatures;
   ``autojit`` (started with ``TF_XLA_FLAGS=--tf_xla_auto_jit=2 --tf_xla_cpu_global_jit``,
   which TensorFlow reads once per process) serves the original signature under auto-clustering.
   Repetitions are interleaved round-robin: per repetition, per model and batch, every variant
   runs one timed block (see ``_order``: no variant always runs right after the other process),
   so all variants see the same machine speed.
   The figure per cell is the median over repetitions of the block's mean latency; a verdict
   compares paired repetitions (see ``_paired``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # run as a script: the repository root, for ``bench.``
    sys.path.insert(0, str(HERE.parent))
from bench.trace_zoo_table import PLACEMENTS, VARIANTS, Results, print_table  # noqa: E402

#: The zoo's model names (bench/zoo.py ``BENCH_ZOO``), listed here so that --help needs no TF.
BENCH_MODELS = ("mlp", "mobilenet_v2", "resnet50", "lstm", "bert", "gru", "text", "transformer",
                "float16_mlp", "mixed_cnn", "nchw_cnn")
AUTOJIT_FLAGS = "--tf_xla_auto_jit=2 --tf_xla_cpu_global_jit"


# ---------------------------------------------------------------------------------------------
# Phase 1: prepare one model (runs in its own process)


def prepare(name: str, out: Path, batches: list[int]) -> dict[str, Any]:
    """Build and save one zoo model, trace it in both placement modes (timed), check and save."""
    sys.path.insert(0, str(HERE.parent))
    from bench.zoo import BENCH_ZOO

    entry = BENCH_ZOO[name]
    model = entry.build()
    model.save(str(out / "original"))
    summary: dict[str, Any] = {}
    for variant, placement in PLACEMENTS.items():
        summary[variant] = _trace_variant(model, entry, out, variant, placement, batches)
    return summary


def _trace_variant(model: Any, entry: Any, out: Path, variant: str, placement: str | None,
                   batches: list[int]) -> dict[str, Any]:
    """Trace at batch 1 with one placement, check every batch size, save (and retrace if need be)."""
    from bench.zoo import compare_outputs

    import kiln_worker

    started = time.perf_counter()
    traced = kiln_worker.trace(model, entry.make_inputs(1, 0), placement=placement)
    trace_seconds = time.perf_counter() - started
    report = traced.report
    summary: dict[str, Any] = {
        "trace_seconds": trace_seconds,
        "on_neuron_ratio": float(traced.on_neuron_ratio),
        "compiled_subgraphs": sum(s.get("status") == "compiled" for s in report["subgraphs"]),
        "placement": report.get("placement"),
        "measured": [(s["name"], s["status"], s.get("measurement", {}).get("speedup"),
                      s.get("large_batch_measurement", {}).get("speedup"), s.get("batches"))
                     for s in report["subgraphs"]],
        "retraced_batches": [],
        "checks": {},
    }
    traced.save(str(out / variant))
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
            retraced = kiln_worker.trace(model, inputs, placement=placement)
            retraced.save(str(out / f"{variant}_b{batch}"))
            summary["retraced_batches"].append(batch)
        summary["checks"][f"b{batch}"] = {"max_abs_diff": diff, "max_abs_output": magnitude, "ok": ok}
    return summary


# ---------------------------------------------------------------------------------------------
# Phase 2: the timing worker (runs in its own process, driven by JSON lines on stdin)


def serve(root: Path, models: list[str], batches: list[int], autojit: bool) -> None:
    """Load the SavedModels, warm every variant up, then answer timing requests on stdin."""
    sys.path.insert(0, str(HERE.parent))
    import tensorflow as tf
    from bench.zoo import BENCH_ZOO

    variants = ("autoclust",) if autojit else ("original", "xla", *PLACEMENTS)
    loaded: dict[Path, Any] = {}

    def signature(path: Path) -> Any:
        if path not in loaded:  # keep the loaded object alive: the signature refers to it
            loaded[path] = tf.saved_model.load(str(path))
        return loaded[path].signatures["serving_default"]

    calls: dict[tuple[str, str, int], Any] = {}
    one_call: dict[tuple[str, str, int], float] = {}  # seconds, to size each block
    errors: dict[tuple[str, str, int], str] = {}
    for name in models:
        original = signature(root / name / "original")
        funcs = {"original": original, "autoclust": original}
        for batch in batches:
            funcs["xla"] = _jit_wrapper(tf, original)  # one per shape: no retracing warnings
            for traced in PLACEMENTS:
                retraced = root / name / f"{traced}_b{batch}"
                funcs[traced] = signature(retraced if retraced.exists() else root / name / traced)
            for variant in variants:
                key = (name, variant, batch)
                try:
                    source = original if variant == "xla" else funcs[variant]
                    (arg,) = source.structured_input_signature[1]
                    if variant == "xla" and _takes_strings(source):  # XLA aborts the process
                        raise TypeError("whole-model XLA cannot take string inputs")
                    feed = {arg: tf.constant(BENCH_ZOO[name].make_inputs(batch, 7))}
                    one_call[key] = _calibrate(funcs[variant], feed)
                    calls[key] = (funcs[variant], feed)
                except Exception as err:
                    errors[key] = f"{type(err).__name__}: {err}".splitlines()[0][:200]
    _reply({"ready": True})
    for line in sys.stdin:
        request = json.loads(line)
        key = (request["model"], request["variant"], request["batch"])
        if key in errors:
            _reply({"error": errors[key]})
            continue
        func, feed = calls[key]
        count = max(1, min(10_000, round(request["seconds"] / one_call[key])))
        started = time.perf_counter()
        for _ in range(count):
            func(**feed)
        _reply({"latency": (time.perf_counter() - started) / count, "calls": count})


def _calibrate(func: Any, feed: dict[str, Any]) -> float:
    """Warm ``func`` up (XLA compiles, caches fill), then its fastest of five calls: the size of
    a timed block must not depend on what happened to run just before the first request."""
    for _ in range(3):
        func(**feed)
    fastest = math.inf
    for _ in range(5):
        started = time.perf_counter()
        func(**feed)
        fastest = min(fastest, time.perf_counter() - started)
    return max(fastest, 1e-6)


def _takes_strings(signature: Any) -> bool:
    return any(spec.dtype.name == "string" for spec in signature.structured_input_signature[1].values())


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
    env.pop("KILN_PLACEMENT", None)  # "traced" is the default placement, "traced_all" is all
    command = [sys.executable, __file__, "--prepare", name, "--out", str(out),
               "--batches", ",".join(map(str, batches))]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        return {"error": f"prepare failed (exit {done.returncode}):\n{tail}"}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _order(rep: int) -> list[str]:
    """The variants' order in repetition ``rep``: the plain process's four rotate (the
    rotation reversed in repetitions 5-8, 13-16 ...) and auto-clustering, in its own process,
    runs first or last in turn. (Rotating all five kept the same neighbours: only ``traced`` and ``xla`` ever ran
    right after the other process, and paid for its spinning threads.)"""
    in_plain = [v for v in VARIANTS if v != "autoclust"]
    shift = rep % len(in_plain)
    order = in_plain[shift:] + in_plain[:shift]
    order = order[::-1] if (rep // len(in_plain)) % 2 else order
    return ["autoclust", *order] if rep % 2 else [*order, "autoclust"]


def measure(root: Path, models: list[str], batches: list[int], reps: int,
            seconds: float) -> Results:
    """Interleaved timing: every repetition visits every (model, batch) and every variant."""
    plain = Worker(root, models, batches, autojit=False)
    auto = Worker(root, models, batches, autojit=True)
    results: Results = {}
    last = plain
    try:
        for rep in range(reps):
            for name in models:
                for batch in batches:
                    for variant in _order(rep):
                        worker = auto if variant == "autoclust" else plain
                        if worker is not last:
                            # The other process's threads may still spin: let them go idle,
                            # then run one untimed block, so no timed block pays for them.
                            time.sleep(0.05)
                            worker.ask_raw({"model": name, "variant": variant, "batch": batch,
                                            "seconds": seconds / 5})
                            last = worker
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma-separated subset of the zoo (default all; "
                        "--quick leaves out resnet50): " + ",".join(BENCH_MODELS))
    parser.add_argument("--reps", type=int, help="interleaved repetitions (default 7, quick 3)")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repetitions")
    parser.add_argument("--batches", default="1,8", help="batch sizes (default 1,8)")
    parser.add_argument("--keep", type=Path, help="keep the SavedModels under this directory")
    parser.add_argument("--reuse", action="store_true",
                        help="with --keep: time the models prepared there by an earlier run")
    parser.add_argument("--prepare", help=argparse.SUPPRESS)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--autojit", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    default = [m for m in BENCH_MODELS if not (args.quick and m == "resnet50")]
    models = args.models.split(",") if args.models else default
    if args.prepare:
        print(json.dumps(prepare(args.prepare, args.out, batches)))
        return 0
    if args.serve:
        serve(args.serve, models, batches, args.autojit)
        return 0
    if unknown := [m for m in models if m not in BENCH_MODELS]:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(BENCH_MODELS)}")
    reps = args.reps or (3 if args.quick else 7)
    seconds = 0.1 if args.quick else 0.25
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as scratch:
        root = args.keep or Path(scratch)
        prepared = {}
        for name in models:
            summary = root / name / "summary.json"
            if args.reuse and summary.is_file():
                prepared[name] = json.loads(summary.read_text())
                continue
            print(f"preparing {name} ...", file=sys.stderr, flush=True)
            prepared[name] = run_prepare(name, root / name, batches)
            summary.write_text(json.dumps(prepared[name]))
        ready = [m for m in models if "error" not in prepared[m]]
        print(f"timing {ready}: {reps} interleaved repetitions", file=sys.stderr, flush=True)
        results = measure(root, ready, batches, reps, seconds) if ready else {}
        print(f"kiln trace_zoo  python {sys.version.split()[0]}  cpus {os.cpu_count()}  "
              f"reps {reps}  block {seconds}s  {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
        print_table(models, batches, prepared, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
