"""The timing cache: ``placement="measured"``'s measurements kept from one trace to the next.

On a shared machine a model whose compiled and plain versions run about as fast measures 0.7x
one minute and 1.3x the next. As in TensorRT's timing cache, each comparison's measurement is
kept on disk under a key of all that decides it (machine and runtime, backend, what is compared,
the graphs, the arguments' shapes and dtypes, ``measure``'s rule), so the same model, inputs and
flags traced again here place the same way and save the same bytes. ``KILN_TIMING_CACHE`` names
the directory (``off``, ``0``, ``none`` or empty: disabled; unset: ``$XDG_CACHE_HOME/kiln/timing``
or ``~/.cache/kiln/timing``). A bad entry is timed again and overwritten; a directory that
cannot be written logs one warning and stores nothing. The cache never fails a trace.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import math
import os
import platform
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import tensorflow as tf
from tensorflow.python.framework import ops as tf_ops  # the counter that numbers functions

from kiln_worker.tracer import measure
from kiln_worker.tracer.graphs import canonical_parts
from kiln_worker.tracer.measure import Measurement, TimingStore

logger = logging.getLogger(__name__)
#: The environment variable naming the cache's directory.
ENV_VAR = "KILN_TIMING_CACHE"
#: Values of ``KILN_TIMING_CACHE`` (any case) that disable the cache.
DISABLED = ("off", "0", "none", "")
#: Environment variables that change how fast either side of a comparison runs.
SPEED_VARIABLES = ("OMP_NUM_THREADS", "TF_XLA_FLAGS", "XLA_FLAGS", "TF_ENABLE_ONEDNN_OPTS")
#: The entry format: a change makes every older entry a miss.
FORMAT = 2


def cache_directory(environ: Mapping[str, str] = os.environ) -> Path | None:
    """Where the timing cache lives, ``None`` when disabled (``KILN_TIMING_CACHE``)."""
    value = environ.get(ENV_VAR)
    if value is not None:
        return None if value.strip().lower() in DISABLED else Path(value).expanduser()
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kiln" / "timing"


def machine_fingerprint(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """What makes timings on this machine and runtime differ from another's."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"cpu": _cpu_model(), "cpu_count": os.cpu_count(), "usable_cpus": usable,
            "machine": platform.machine(), "tensorflow": tf.__version__,
            "environment": {name: environ.get(name) for name in SPEED_VARIABLES},
            "kiln_worker": _version("kiln-worker")}


def timing_key(fingerprint: Mapping[str, Any], backend: str, label: str,
               graph_defs: Sequence[Any], args: Sequence[Any], details: Sequence[str] = ()) -> str:
    """The sha256 (hex) naming one comparison's entry: what it runs, on what, by what rule;
    ``details`` tell two comparisons of the same graphs apart (boundary tensors, batch mode)."""
    rules = [measure.SUBGRAPH, measure.WHOLE_MODEL, measure.WARM_CALLS]
    header = {"format": FORMAT, "machine": dict(fingerprint), "backend": backend, "label": label,
              "details": list(details), "args": [_spec(a) for a in args], "rules": rules}
    digest = hashlib.sha256()
    first = [json.dumps(header, sort_keys=True, default=str).encode()]
    for part in itertools.chain(first, *(canonical_parts(g) for g in graph_defs)):
        digest.update(len(part).to_bytes(8, "big") + part)  # lengths: no two splits hash alike
    return digest.hexdigest()


@dataclass
class TimingCache:
    """One trace's use of the cache (passed to the passes that time; traces share only the
    disk): where, the machine's fingerprint, and for the report ``hits`` and ``stored``."""

    directory: Path | None
    backend: str
    fingerprint: dict[str, Any] = field(default_factory=dict)
    hits: int = 0
    stored: int = 0
    writable: bool = True

    @classmethod
    def from_env(cls, backend: str) -> TimingCache:
        """The cache ``KILN_TIMING_CACHE`` names (see :func:`cache_directory`)."""
        directory = cache_directory()
        return cls(directory, backend, machine_fingerprint() if directory is not None else {})

    def summary(self) -> dict[str, Any]:
        """``report["placement"]["timing_cache"]``."""
        return {"directory": self.directory and str(self.directory), "hits": self.hits,
                "stored": self.stored}


@dataclass
class CacheEntry:
    """One comparison's place in the cache (a ``measure.TimingStore``). TensorFlow numbers the
    functions it traces (names the saved model keeps) from a counter every eager op advances;
    the entry records how far the timing advanced it, and a hit advances it as far, so the
    functions traced later are named as in the trace that timed, and both save the same bytes."""

    cache: TimingCache
    key: str
    label: str
    path: Path
    counter_at_miss: int = 0

    def load(self) -> Measurement | None:
        """The stored measurement, if there is a usable one (else it is timed again)."""
        try:
            found, ops = _measurement(json.loads(self.path.read_text("utf-8")), self.key)
        except Exception as e:  # unreadable, corrupt or another key's: timed again, overwritten
            if not isinstance(e, FileNotFoundError):
                logger.info("timing cache: ignoring %s: %s", self.path, e)
            self.counter_at_miss = tf_ops.uid()
            return None
        for _ in range(ops):
            tf_ops.uid()
        self.cache.hits += 1
        return found

    def save(self, measurement: Measurement) -> None:
        """Write the entry atomically; when that fails, warn once and store no more."""
        cache = self.cache
        if not cache.writable:
            return
        entry = {"format": FORMAT, "key": self.key, "label": self.label, "backend": cache.backend,
                 "compiled_seconds": list(measurement.compiled_seconds),
                 "plain_seconds": list(measurement.plain_seconds),
                 "calls_per_round": measurement.calls_per_round,
                 "min_margin": measurement.min_margin,
                 "tf_ops": tf_ops.uid() - self.counter_at_miss + 1,
                 "timed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _write_atomically(self.path, json.dumps(entry, sort_keys=True))
        except OSError as e:
            cache.writable = False
            logger.warning("timing cache %s cannot be written (%s): this trace's measurements "
                           "are not kept", cache.directory, e)
            return
        cache.stored += 1


def store_for(cache: TimingCache | None, label: str, graph_defs: Sequence[Any],
              args: Sequence[Any], details: Sequence[str] = ()) -> TimingStore | None:
    """Where ``measure.compare`` keeps this comparison (``None``: no cache, or no key)."""
    if cache is None or cache.directory is None:
        return None
    try:
        key = timing_key(cache.fingerprint, cache.backend, label, graph_defs, args, details)
    except Exception as e:  # e.g. a graph over protobuf's 2 GiB: timed, not cached
        logger.info("timing cache: no key for this %s: %s", label, e)
        return None
    return CacheEntry(cache, key, label, cache.directory / f"{key}.json")


def _measurement(entry: dict[str, Any], key: str) -> tuple[Measurement, int]:
    """The entry's measurement and how far its timing advanced TensorFlow's counter."""
    if entry.get("format") != FORMAT or entry.get("key") != key:
        raise ValueError("another format or key")
    compiled = tuple(float(s) for s in entry["compiled_seconds"])
    plain = tuple(float(s) for s in entry["plain_seconds"])
    calls, timed_at, ops = entry["calls_per_round"], entry["timed_at"], entry["tf_ops"]
    margin = float(entry["min_margin"])
    finite = all(math.isfinite(s) and s >= 0 for s in compiled + plain)
    counts = all(isinstance(n, int) and 1 <= n <= 10**7 for n in (calls, ops))
    if not (compiled and len(compiled) == len(plain) and finite and counts
            and isinstance(timed_at, str) and 0 <= margin < 1):
        raise ValueError("not a measurement")
    return Measurement(compiled, plain, calls, margin, cached_at=timed_at), ops


def _write_atomically(path: Path, text: str) -> None:
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _spec(value: Any) -> list[Any]:
    dims = [None if d is None else int(d) for d in getattr(value, "shape", ())]
    dtype = getattr(value, "dtype", type(value))
    return [dims, str(getattr(dtype, "name", dtype))]


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", errors="replace") as file:
        models = [line.split(":", 1)[1].strip() for line in file if line.startswith("model name")]
        return models[0] if models else None
    return None


def _version(distribution: str) -> str:
    with contextlib.suppress(metadata.PackageNotFoundError):
        return metadata.version(distribution)
    return "unknown"
