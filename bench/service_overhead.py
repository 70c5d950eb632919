"""How much time the service adds to a compile: through the API vs. ``kiln_worker.trace`` directly.

    .venv/bin/python bench/service_overhead.py [--repeat 3] [--no-redis]

Compiles the bundled example (``examples/mlp``) in interleaved rounds, each round running:

- ``service/embedded``: ``kiln-service up`` (filesystem broker, SQLite, local artifacts):
  submit with curl-like multipart → job succeeded with its artifacts stored;
- ``service/redis``: ``kiln-service serve`` + ``kiln-worker`` on Redis (db 5) and PostgreSQL
  (a fresh database, dropped after);
- ``runner child``: ``python -m kiln_worker.runner`` alone, as the worker spawns it (import
  TensorFlow, load, trace, save, verify, pack);
- ``trace, fresh process``: a new interpreter that imports TensorFlow, loads the SavedModel,
  calls ``kiln_worker.trace`` and saves the result (no verification);
- ``trace, warm``: ``kiln_worker.trace`` + save in this already-warm process.

The services run with the compile cache off, so every job compiles (``bench/compile_cache.py``
measures the cache).

Prints the median and min of each, and the service overhead = service - runner child (the
child's work is the compile itself; everything else is the service). Target: under one second.

    .venv/bin/python bench/service_overhead.py --warm-vs-cold [--repeat 5] [--no-redis]
        [--redis-url redis://127.0.0.1:6379/5]

Compile processes started ahead (``KILN_WORKER_WARM_PROCESSES``) on vs. off, interleaved in one
run: the same two stacks as above, each twice (warm on, warm off), every job submitted to a
worker that has finished its previous job. Prints submit → ``succeeded`` medians and the ratio.
Target: under 1.5 s median with warm processes, at most half the time without.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _stack import BIN, INPUTS, MODEL, Service, bench_env, embedded, free_port

REDIS_URL = "redis://127.0.0.1:6379/5"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"

FRESH_TRACE = """
import os, sys, time
t0 = time.perf_counter()
import numpy as np, tensorflow as tf, kiln_worker
loaded = tf.saved_model.load(sys.argv[1])  # keep it: the signature uses its variables
fn = loaded.signatures["serving_default"]
x = {k: tf.constant(v) for k, v in np.load(sys.argv[2]).items()}
kiln_worker.trace(fn, x).save(sys.argv[3])
"""


def _runner_child(work: Path, model_dir: Path) -> float:
    from kiln_worker._protocol import JobSpec

    run = Path(tempfile.mkdtemp(dir=work))
    (run / "out").mkdir()
    JobSpec(job_id="bench", model_dir=str(model_dir), output_dir=str(run / "out"),
            error_file=str(run / "error.json"), example_inputs=str(INPUTS)).write(run / "spec.json")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kiln_worker.runner", str(run / "spec.json")],
                   check=True, capture_output=True, env=bench_env(TF_USE_LEGACY_KERAS="1",
                                                                  TF_CPP_MIN_LOG_LEVEL="2"))
    return time.perf_counter() - start


def _fresh_trace(work: Path, model_dir: Path) -> float:
    out = Path(tempfile.mkdtemp(dir=work)) / "compiled"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", FRESH_TRACE, str(model_dir), str(INPUTS), str(out)],
                   check=True, capture_output=True, env=bench_env(TF_USE_LEGACY_KERAS="1",
                                                                  TF_CPP_MIN_LOG_LEVEL="2"))
    return time.perf_counter() - start


def _warm_trace(work: Path, model_dir: Path) -> Callable[[], float]:
    import numpy as np
    import tensorflow as tf

    import kiln_worker

    loaded = tf.saved_model.load(str(model_dir))
    fn = loaded.signatures["serving_default"]
    inputs = {k: tf.constant(v) for k, v in np.load(INPUTS).items()}

    def once() -> float:
        assert loaded is not None  # the signature's variables live in ``loaded``
        start = time.perf_counter()
        kiln_worker.trace(fn, inputs).save(str(Path(tempfile.mkdtemp(dir=work)) / "c"))
        return time.perf_counter() - start

    once()  # the first call pays TensorFlow's one-off graph and XLA set-up
    return once


def _redis_stack(work: Path, db_name: str) -> Service:
    env = bench_env(KILN_DATA_DIR=str(work / "redis-data"), KILN_BROKER_URL=REDIS_URL,
                    KILN_DATABASE_URL=f"postgresql+psycopg://postgres@127.0.0.1:5432/{db_name}")
    subprocess.run([str(BIN / "kiln-service"), "migrate"], env=env, check=True, capture_output=True)
    port = free_port()
    return Service("service/redis", [[str(BIN / "kiln-service"), "serve", "--port", str(port),
                                      "--log-level", "warning"],
                                     [str(BIN / "kiln-worker"), "--targets", "xla",
                                      "--loglevel", "WARNING"]], env, port, work / "logs")


def _second_db(redis_url: str) -> str:
    """The same Redis, the next database number (the warm-off stack's broker)."""
    base, _, db = redis_url.rpartition("/")
    return f"{base}/{int(db) + 1 if db.isdigit() else 1}"


def _warm_stacks(work: Path, redis_url: str, db_name: str | None) -> list[Service]:
    """The embedded stack and (with ``db_name``) Redis + PostgreSQL, each warm on and off."""
    services: list[Service] = []
    for warm in ("on", "off"):
        flag = "true" if warm == "on" else "false"
        services.append(embedded(f"embedded/warm {warm}", work,
                                 bench_env(KILN_WORKER_WARM_PROCESSES=flag)))
        if db_name is None:
            continue
        # Each stack has its own Redis database and PostgreSQL database.
        env = bench_env(KILN_DATA_DIR=str(work / f"redis-{warm}"), KILN_WORKER_WARM_PROCESSES=flag,
                        KILN_BROKER_URL=_second_db(redis_url) if warm == "off" else redis_url,
                        KILN_DATABASE_URL=f"postgresql+psycopg://postgres@127.0.0.1:5432/{db_name}_{warm}")
        subprocess.run([str(BIN / "kiln-service"), "migrate"], env=env, check=True,
                       capture_output=True)
        port = free_port()
        services.append(Service(f"redis+pg/warm {warm}", [
            [str(BIN / "kiln-service"), "serve", "--port", str(port), "--log-level", "warning"],
            [str(BIN / "kiln-worker"), "--targets", "xla", "--loglevel", "WARNING"]],
            env, port, work / "logs"))
    return services


def warm_vs_cold(repeat: int, with_redis: bool, redis_url: str, settle: float) -> None:
    """Submit → succeeded with warm compile processes on vs. off, interleaved (``--warm-vs-cold``)."""
    import psycopg
    import redis

    work = Path(tempfile.mkdtemp(prefix="kiln-bench-warm-"))
    db_name = f"kiln_bench_{secrets.token_hex(4)}" if with_redis else None
    services: list[Service] = []
    try:
        if db_name is not None:
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                for warm in ("on", "off"):
                    conn.execute(f'CREATE DATABASE "{db_name}_{warm}"')
        services = _warm_stacks(work, redis_url, db_name)
        times: dict[str, list[float]] = {s.name: [] for s in services}
        for rnd in range(repeat):
            for service in services:
                time.sleep(settle)  # the worker has finished its previous job and is idle
                times[service.name].append(service.compile())
            print(f"round {rnd + 1}: " + ", ".join(f"{n} {t[-1]:.2f}s" for n, t in times.items()),
                  flush=True)
        print(f"\n{'stack':<22}{'median s':>10}{'min s':>9}{'child s':>9}{'ready':>7}   (n={repeat})")
        for service in services:
            child = statistics.median(b["child_seconds"] for b in service.breakdowns)
            ready = sum(int(b["warm_ready"]) for b in service.breakdowns)
            print(f"{service.name:<22}{statistics.median(times[service.name]):>10.2f}"
                  f"{min(times[service.name]):>9.2f}{child:>9.2f}{ready:>5}/{repeat}")
        print("(ready: jobs taken by a compile process started ahead with TensorFlow loaded)")
        for stack in ("embedded", "redis+pg"):
            on, off = times.get(f"{stack}/warm on"), times.get(f"{stack}/warm off")
            if on and off:
                ratio = statistics.median(on) / statistics.median(off)
                print(f"{stack}: warm/cold = {ratio:.2f} (target: median < 1.5 s, ratio <= 0.5)")
    finally:
        for service in services:
            service.stop()
        if db_name is not None:
            for url in (redis_url, _second_db(redis_url)):
                redis.Redis.from_url(url).flushdb()
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                for warm in ("on", "off"):
                    conn.execute(f'DROP DATABASE IF EXISTS "{db_name}_{warm}" WITH (FORCE)')


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis/PostgreSQL stack")
    parser.add_argument("--warm-vs-cold", action="store_true",
                        help="compile processes started ahead on vs. off (see above)")
    parser.add_argument("--redis-url", default=REDIS_URL, help="Redis for --warm-vs-cold")
    parser.add_argument("--settle", type=float, default=5.0,
                        help="--warm-vs-cold: idle seconds before each job (default 5: the "
                             "compile process started after the previous job has loaded TF)")
    args = parser.parse_args()
    if args.warm_vs_cold:
        warm_vs_cold(args.repeat, not args.no_redis, args.redis_url, args.settle)
        return
    import psycopg
    import redis

    work = Path(tempfile.mkdtemp(prefix="kiln-bench-"))
    model_root = work / "model"
    with tarfile.open(MODEL) as tar:
        tar.extractall(model_root, filter="data")
    model_dir = model_root / "mlp"
    db_name = f"kiln_bench_{secrets.token_hex(4)}"
    services: list[Service] = []
    try:
        services.append(embedded("service/embedded", work, bench_env()))
        if not args.no_redis:
            redis.Redis.from_url(REDIS_URL).flushdb()
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{db_name}"')
            services.append(_redis_stack(work, db_name))
        warm = _warm_trace(work, model_dir)
        runs: dict[str, Callable[[], float]] = {s.name: s.compile for s in services}
        runs["runner child"] = lambda: _runner_child(work, model_dir)
        runs["trace, fresh process"] = lambda: _fresh_trace(work, model_dir)
        runs["trace, warm"] = warm
        times: dict[str, list[float]] = {name: [] for name in runs}
        for rnd in range(args.repeat):
            for name, run in runs.items():
                times[name].append(run())
            print(f"round {rnd + 1}: " + ", ".join(f"{n} {t[-1]:.2f}s" for n, t in times.items()),
                  flush=True)
        _print_table(times, services)
    finally:
        for service in services:
            service.stop()
        if not args.no_redis:
            redis.Redis.from_url(REDIS_URL).flushdb()
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


def _print_table(times: dict[str, list[float]], services: list[Service]) -> None:
    print(f"\n{'path':<24}{'median s':>10}{'min s':>9}   (n={len(next(iter(times.values())))})")
    for name, values in times.items():
        print(f"{name:<24}{statistics.median(values):>10.2f}{min(values):>9.2f}")
    child = statistics.median(times["runner child"])
    fresh = statistics.median(times["trace, fresh process"])
    print("\nservice overhead (target < 1 s):")
    for service in services:
        total = statistics.median(times[service.name])
        # Paired per job: the job's own wall time minus its compile child's, which is immune
        # to the noise of a shared machine that differs from one run to the next.
        paired = [b["total"] - b["child_seconds"] for b in service.breakdowns]
        parts = {k: statistics.median(b[k] for b in service.breakdowns)
                 for k in ("queue_wait_seconds", "prepare_seconds", "store_seconds")}
        print(f"  {service.name:<17} per job (total - its child): median {statistics.median(paired):.2f} s,"
              f" max {max(paired):.2f} s  [queue wait {parts['queue_wait_seconds']:.2f}, prepare "
              f"{parts['prepare_seconds']:.2f}, store {parts['store_seconds']:.2f}, rest = upload "
              "and polling]")
        child_in = statistics.median(b["child_seconds"] for b in service.breakdowns)
        print(f"  {'':<17} its compile child took {child_in:.2f} s (median) under the service")
        print(f"  {'':<17} medians: {total - child:+.2f} s vs. the runner child alone, "
              f"{total - fresh:+.2f} s vs. trace in a fresh process")


if __name__ == "__main__":
    main()
