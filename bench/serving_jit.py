"""Signature latency of a saved traced model with and without its wrappers compiled whole.

For a few zoo models that compile whole, traces with ``placement="all"``, saves the traced model
(``TracedModel.save``: the wrappers of its compiled call are marked for XLA, see
``kiln_worker/tracer/serving_jit.py``), writes a copy with those marks taken off (as TensorFlow
saves it), and times the ``serving_default`` signature of the original model, the unmarked copy
and the marked model in one process, in interleaved rounds (the order alternates). Prints the
median latency per call and the ratios.

    TF_USE_LEGACY_KERAS=1 TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python bench/serving_jit.py
    ... --models mlp,gru --batches 1,8 --rounds 9
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _unmark(saved: Path, names: list[str], out: Path) -> None:
    from tensorflow.core.protobuf import saved_model_pb2

    shutil.copytree(saved, out)
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((out / "saved_model.pb").read_bytes())
    for function in proto.meta_graphs[0].graph_def.library.function:
        if function.signature.name in names:
            del function.attr["_XlaMustCompile"]
    (out / "saved_model.pb").write_bytes(proto.SerializeToString(deterministic=True))


def _prepare(name: str, root: Path) -> dict[str, Path]:
    from bench.zoo import BENCH_ZOO

    import kiln_worker
    from kiln_worker.tracer.serving_jit import compile_wrappers

    entry = BENCH_ZOO[name]
    model = entry.build()
    model.save(str(root / "original"))
    traced = kiln_worker.trace(model, entry.make_inputs(1, 0), placement="all")
    tf_keras_save = super(type(traced), traced).save  # tf_keras's own save: nothing marked
    tf_keras_save(str(root / "plain_save"))
    names = compile_wrappers(root / "plain_save")  # marks that copy; unmarked below
    _unmark(root / "plain_save", names, root / "unmarked")
    traced.save(str(root / "marked"))
    print(f"{name}: {len(names)} wrapper functions marked", file=sys.stderr)
    return {v: root / v for v in ("original", "unmarked", "marked")}


def _caller(signature: Any, x: Any) -> Any:
    (arg,) = signature.structured_input_signature[1]
    return lambda: signature(**{arg: x})


def _time(call: Any, seconds: float) -> float:
    call()
    started, count = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        call()
        count += 1
    return (time.perf_counter() - started) / count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="mlp,gru,lstm,float16_mlp")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--seconds", type=float, default=0.2, help="per timed block")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE.parent))
    import tensorflow as tf
    from bench.zoo import BENCH_ZOO

    print(f"{'model':<12} {'batch':>5} {'original':>9} {'unmarked':>9} {'marked':>9}  "
          "marked vs unmarked   vs original (median ms per call)")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            paths = _prepare(name, Path(tmp) / name)
            signatures = {v: tf.saved_model.load(str(p)).signatures["serving_default"]
                          for v, p in paths.items()}
            for batch in (int(b) for b in args.batches.split(",")):
                x = tf.constant(BENCH_ZOO[name].make_inputs(batch, 7))
                calls = {v: _caller(s, x) for v, s in signatures.items()}
                times: dict[str, list[float]] = {v: [] for v in calls}
                for round_ in range(args.rounds):
                    order = list(calls) if round_ % 2 == 0 else list(reversed(calls))
                    for variant in order:
                        times[variant].append(_time(calls[variant], args.seconds))
                ms = {v: statistics.median(t) * 1e3 for v, t in times.items()}
                print(f"{name:<12} {batch:>5} {ms['original']:>9.3f} {ms['unmarked']:>9.3f} "
                      f"{ms['marked']:>9.3f}  {ms['unmarked'] / ms['marked']:>6.2f}x faster"
                      f"        {ms['original'] / ms['marked']:>6.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
