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

The services run with the compile cache off, so every job compiles. ``--cache`` measures the cache
instead (:func:`cache_hit_vs_miss`): submit → succeeded of a cache hit vs. a miss.

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
import contextlib
import io
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MODEL = ROOT / "examples" / "mlp" / "mlp.tar.gz"
INPUTS = ROOT / "examples" / "mlp" / "example_inputs.npz"
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


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    # The benchmark measures the service's own overhead: no keys, no fairness throttling.
    env.update(KILN_AUTH="off", KILN_RATE_LIMIT_PER_MINUTE="0", KILN_MAX_ACTIVE_JOBS_PER_TENANT="0")
    env.update(KILN_CACHE_MAX_BYTES="0")  # every job compiles (cache_hit_vs_miss turns it on)
    env.update(extra)
    return env


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Service:
    """A running Kiln (processes started here, stopped by pid and group)."""

    def __init__(self, name: str, argvs: list[list[str]], env: dict[str, str], port: int,
                 logs: Path) -> None:
        self.name, self.url = name, f"http://127.0.0.1:{port}"
        logs.mkdir(parents=True, exist_ok=True)
        self.procs = []
        for i, argv in enumerate(argvs):
            with open(logs / f"{name.replace('/', '-')}-{i}.log", "ab") as out:
                self.procs.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                                   env=env, start_new_session=True))
        self.client = httpx.Client(base_url=self.url, timeout=60)
        #: per job: the worker's own account of where the time went (Job.report["worker_timings"])
        self.breakdowns: list[dict[str, float]] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if self.client.get("/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError(f"{name} did not start; see {logs}")
        self.compile()  # warm-up: the worker's first job pays one-off costs
        self.breakdowns.clear()

    def compile(self) -> float:
        """Submit the example and wait until it succeeded; return the seconds taken."""
        start = time.perf_counter()
        resp = self.client.post("/v1/compile", files={
            "model": ("mlp.tar.gz", MODEL.read_bytes()), "example_inputs": ("x.npz", INPUTS.read_bytes())})
        resp.raise_for_status()
        job_id = resp.json()["id"]
        while True:
            job = self.client.get(f"/v1/jobs/{job_id}").json()
            if job["status"] == "succeeded" and job["artifacts"]:
                total = time.perf_counter() - start
                self.breakdowns.append({**job["report"]["worker_timings"], "total": total})
                return total
            if job["status"] in ("failed", "cancelled"):
                raise RuntimeError(f"{self.name}: job {job_id} {job['status']}: {job['failure']}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.client.close()
        for proc in reversed(self.procs):
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _runner_child(work: Path, model_dir: Path) -> float:
    from kiln_worker._protocol import JobSpec

    run = Path(tempfile.mkdtemp(dir=work))
    (run / "out").mkdir()
    JobSpec(job_id="bench", model_dir=str(model_dir), output_dir=str(run / "out"),
            error_file=str(run / "error.json"), example_inputs=str(INPUTS)).write(run / "spec.json")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kiln_worker.runner", str(run / "spec.json")],
                   check=True, capture_output=True, env=_env(TF_USE_LEGACY_KERAS="1",
                                                             TF_CPP_MIN_LOG_LEVEL="2"))
    return time.perf_counter() - start


def _fresh_trace(work: Path, model_dir: Path) -> float:
    out = Path(tempfile.mkdtemp(dir=work)) / "compiled"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", FRESH_TRACE, str(model_dir), str(INPUTS), str(out)],
                   check=True, capture_output=True, env=_env(TF_USE_LEGACY_KERAS="1",
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


def _submit_and_wait(client: httpx.Client, files: dict[str, tuple[str, bytes]]
                     ) -> tuple[float, dict[str, object]]:
    """Submit, then poll every 20 ms until the job ended; return the seconds and the job."""
    start = time.perf_counter()
    resp = client.post("/v1/compile", files=files)
    resp.raise_for_status()
    job = resp.json()
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.02)
        job = client.get(f"/v1/jobs/{job['id']}").json()
    return time.perf_counter() - start, job


def cache_hit_vs_miss(work: Path, runs: int = 5) -> dict[str, float]:
    """Median submit → ``succeeded`` of the bundled MLP: a compile cache hit vs. a miss.

    One ``kiln-service up`` with the cache on (after its warm-up compile). Each of ``runs``
    rounds submits, interleaved, a miss (example inputs never sent before: a real compile) and
    then the same request again (a hit, answered by ``POST /v1/compile`` itself).

    Returns:
        ``{"hit": median s, "miss": median s, "ratio": miss / hit}``.
    """
    import numpy as np

    port = _port()
    service = Service("service/cache", [[str(BIN / "kiln-service"), "up", "--port", str(port),
                                         "--data-dir", str(work / "cache")]],
                      _env(KILN_CACHE_MAX_BYTES=str(1 << 30)), port, work / "logs")
    times: dict[str, list[float]] = {"miss": [], "hit": []}
    try:
        with np.load(INPUTS) as arrays:
            base = {k: np.asarray(v) for k, v in arrays.items()}
        for rnd in range(runs):
            buf = io.BytesIO()
            np.savez(buf, **{k: (v + (rnd + 1) * 1e-3).astype(v.dtype) for k, v in base.items()})
            files = {"model": ("mlp.tar.gz", MODEL.read_bytes()),
                     "example_inputs": ("x.npz", buf.getvalue())}
            for kind in ("miss", "hit"):
                seconds, job = _submit_and_wait(service.client, files)
                cache = job.get("cache") or {}
                if job["status"] != "succeeded" or cache.get("hit") != (kind == "hit"):
                    raise RuntimeError(f"{kind}: unexpected job {job}")
                times[kind].append(seconds)
            print(f"round {rnd + 1}: miss {times['miss'][-1]:.3f}s, hit {times['hit'][-1]:.3f}s",
                  flush=True)
    finally:
        service.stop()
    hit, miss = statistics.median(times["hit"]), statistics.median(times["miss"])
    print(f"\nbundled MLP, submit → succeeded, median of {runs} (interleaved): cache hit "
          f"{hit:.3f} s (target < 0.3 s), miss {miss:.2f} s, miss/hit {miss / hit:.0f}x")
    return {"hit": hit, "miss": miss, "ratio": miss / hit}


def _redis_stack(work: Path, db_name: str) -> Service:
    env = _env(KILN_DATA_DIR=str(work / "redis-data"), KILN_BROKER_URL=REDIS_URL,
               KILN_DATABASE_URL=f"postgresql+psycopg://postgres@127.0.0.1:5432/{db_name}")
    subprocess.run([str(BIN / "kiln-service"), "migrate"], env=env, check=True, capture_output=True)
    port = _port()
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
        port = _port()
        services.append(Service(f"embedded/warm {warm}", [[
            str(BIN / "kiln-service"), "up", "--port", str(port), "--data-dir",
            str(work / f"emb-{warm}")]], _env(KILN_WORKER_WARM_PROCESSES=flag), port,
            work / "logs"))
        if db_name is None:
            continue
        # Each stack has its own Redis database and PostgreSQL database.
        env = _env(KILN_DATA_DIR=str(work / f"redis-{warm}"), KILN_WORKER_WARM_PROCESSES=flag,
                   KILN_BROKER_URL=_second_db(redis_url) if warm == "off" else redis_url,
                   KILN_DATABASE_URL=f"postgresql+psycopg://postgres@127.0.0.1:5432/{db_name}_{warm}")
        subprocess.run([str(BIN / "kiln-service"), "migrate"], env=env, check=True,
                       capture_output=True)
        port = _port()
        services.append(Service(f"redis+pg/warm {warm}", [
            [str(BIN / "kiln-service"), "serve", "--port", str(port), "--log-level", "warning"],
            [str(BIN / "kiln-worker"), "--targets", "xla", "--loglevel", "WARNING"]],
            env, port, work / "logs"))
    return services


def warm_vs_cold(repeat: int, with_redis: bool, redis_url: str) -> None:
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
                time.sleep(2.0)  # the worker has finished its previous job and is idle
                times[service.name].append(service.compile())
            print(f"round {rnd + 1}: " + ", ".join(f"{n} {t[-1]:.2f}s" for n, t in times.items()),
                  flush=True)
        print(f"\n{'stack':<22}{'median s':>10}{'min s':>9}{'child s':>9}   (n={repeat})")
        for service in services:
            child = statistics.median(b["child_seconds"] for b in service.breakdowns)
            print(f"{service.name:<22}{statistics.median(times[service.name]):>10.2f}"
                  f"{min(times[service.name]):>9.2f}{child:>9.2f}")
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
    parser.add_argument("--cache", action="store_true", help="only: compile cache hit vs. miss")
    parser.add_argument("--warm-vs-cold", action="store_true",
                        help="compile processes started ahead on vs. off (see above)")
    parser.add_argument("--redis-url", default=REDIS_URL, help="Redis for --warm-vs-cold")
    args = parser.parse_args()
    if args.warm_vs_cold:
        warm_vs_cold(args.repeat, not args.no_redis, args.redis_url)
        return
    if args.cache:
        cache_hit_vs_miss(Path(tempfile.mkdtemp(prefix="kiln-bench-")), max(args.repeat, 5))
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
        port = _port()
        services.append(Service("service/embedded", [[str(BIN / "kiln-service"), "up", "--port",
                                                      str(port), "--data-dir", str(work / "emb")]],
                                _env(), port, work / "logs"))
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
