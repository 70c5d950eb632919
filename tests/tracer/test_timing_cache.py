"""The timing cache (``tracer/timing_cache.py``): measured placement's timings kept between
traces, so the same model, inputs and flags place the same way on a noisy machine.

The suite runs with ``KILN_TIMING_CACHE=off`` (tests/conftest.py); these tests turn it on, each
in a directory of its own.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.tracer.conftest import mlp

#: Prints the timing key of a graph with a while loop (library functions TensorFlow numbers per
#: process), built after a few unrelated functions when ``argv[1]`` says so.
_KEY_SCRIPT = """
import sys
import tensorflow as tf
from kiln_worker.tracer.timing_cache import machine_fingerprint, timing_key
for _ in range(int(sys.argv[1])):
    tf.function(lambda x: x + 1).get_concrete_function(tf.TensorSpec([2]))
def count(x):
    return tf.while_loop(lambda i, y: i < 3, lambda i, y: (i + 1, y * 2.0), [0, x])[1]
graph = tf.function(count).get_concrete_function(tf.TensorSpec([None, 4])).graph.as_graph_def()
print(timing_key(machine_fingerprint(), "xla", "subgraph", [graph], [tf.zeros([2, 4])]))
"""


def _loop_graph(offset: float = 2.0) -> Any:
    import tensorflow as tf

    def count(x: Any) -> Any:
        return tf.while_loop(lambda i, y: i < 3, lambda i, y: (i + 1, y * offset), [0, x])[1]

    spec = tf.TensorSpec([None, 4])
    return tf.function(count).get_concrete_function(spec).graph.as_graph_def()


def _key(graph: Any, args: list[Any], label: str = "subgraph", **fingerprint: Any) -> str:
    from kiln_worker.tracer.timing_cache import timing_key

    return timing_key(fingerprint, "xla", label, [graph], args)


def _enable(monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
    monkeypatch.setenv("KILN_TIMING_CACHE", str(directory))


@pytest.fixture(scope="module")
def model() -> Any:
    return mlp(16)


def _trace(model: Any, x: np.ndarray) -> dict[str, Any]:
    import kiln_worker

    return dict(kiln_worker.trace(model, x, placement="measured").report)


def _measurements(report: dict[str, Any]) -> list[dict[str, Any]]:
    found = [s[k] for s in report["subgraphs"] for k in ("measurement", "large_batch_measurement")
             if k in s]
    return found + list(report["placement"]["whole_model"])


def test_key_is_the_same_in_fresh_processes() -> None:
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    keys = [
        subprocess.run([sys.executable, "-c", _KEY_SCRIPT, before], env=env, check=True,
                       capture_output=True, text=True, timeout=300).stdout.split()[-1]
        for before in ("0", "0", "3", "3")  # the last two number their functions otherwise
    ]
    assert len(keys[0]) == 64 and len(set(keys)) == 1


def test_key_ignores_function_numbering_but_not_content() -> None:
    import tensorflow as tf

    first, again, other = _loop_graph(), _loop_graph(), _loop_graph(3.0)
    names = [{f.signature.name for f in g.library.function} for g in (first, again)]
    assert names[0] and names[0] != names[1]  # TensorFlow numbered them anew ...
    args = [tf.zeros([2, 4])]
    assert _key(first, args) == _key(again, args)  # ... which the key does not see
    assert _key(first, args) != _key(other, args)  # a different body is another key


def test_key_differs_with_shape_dtype_label_machine_and_rule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kiln_worker.tracer import measure

    graph = _loop_graph()
    base = _key(graph, [np.zeros((2, 4), np.float32)])
    assert base == _key(graph, [np.ones((2, 4), np.float32)])  # values do not count
    others = [
        _key(graph, [np.zeros((3, 4), np.float32)]),
        _key(graph, [np.zeros((2, 4), np.float64)]),
        _key(graph, [np.zeros((2, 4), np.float32)], label="whole-model candidate"),
        _key(graph, [np.zeros((2, 4), np.float32)], cpu="another"),
    ]
    monkeypatch.setattr(measure, "WHOLE_MODEL", measure.Rule(min_margin=0.1))
    others.append(_key(graph, [np.zeros((2, 4), np.float32)]))
    monkeypatch.setattr(measure, "SUBGRAPH", measure.Rule(rounds=9))
    others.append(_key(graph, [np.zeros((2, 4), np.float32)]))
    assert len({base, *others}) == 1 + len(others)


def test_cache_directory_from_the_environment(tmp_path: Path) -> None:
    from kiln_worker.tracer.timing_cache import cache_directory

    home = {"HOME": str(tmp_path)}
    assert cache_directory({"XDG_CACHE_HOME": "/x"}) == Path("/x/kiln/timing")
    assert cache_directory({"KILN_TIMING_CACHE": str(tmp_path)}) == tmp_path
    for off in ("off", "OFF", "0", "none", "", " "):
        assert cache_directory({"KILN_TIMING_CACHE": off, **home}) is None
    os_home = Path(os.path.expanduser("~"))
    assert cache_directory({}) == os_home / ".cache" / "kiln" / "timing"


def test_a_second_trace_takes_every_measurement_from_the_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, rng: np.random.Generator, model: Any
) -> None:
    from kiln_worker.tracer import measure

    _enable(monkeypatch, tmp_path / "cache")
    x = rng.normal(size=(1, 32)).astype("float32")
    first = _trace(model, x)
    stored = first["placement"]["timing_cache"]
    assert stored["hits"] == 0 and stored["stored"] == len(list((tmp_path / "cache").iterdir()))
    assert stored["stored"] >= 2 and all("cached_at" not in m for m in _measurements(first))

    def no_timing(*args: Any) -> float:
        raise AssertionError("timed although the cache holds the measurement")

    monkeypatch.setattr(measure, "_block", no_timing)
    second = _trace(model, x)
    assert second["placement"]["timing_cache"]["hits"] == stored["stored"]
    assert second["placement"]["timing_cache"]["stored"] == 0
    assert [s["status"] for s in second["subgraphs"]] == [s["status"] for s in first["subgraphs"]]
    again = _measurements(second)
    assert all("cached_at" in m for m in again)  # and in the baselines' nested timings
    from kiln_worker.tracer.report import without_timings

    assert [without_timings(m) for m in again] == _measurements(first)


def test_a_corrupt_or_mismatched_entry_is_timed_again_and_rewritten(tmp_path: Path) -> None:
    from kiln_worker.tracer.measure import compare
    from kiln_worker.tracer.timing_cache import CacheEntry, TimingCache, store_for

    cache = TimingCache(tmp_path, "xla")
    store = store_for(cache, "subgraph", [_loop_graph()], [np.zeros((2, 4), np.float32)])
    assert isinstance(store, CacheEntry)
    path = tmp_path / f"{store.key}.json"
    for bad in ("{not json", json.dumps({"format": 1, "key": "another"}), "[]"):
        path.write_text(bad)
        timed = compare(lambda: None, lambda: None, [], store=store)
        assert timed.cached_at is None  # timed, not read
        entry = json.loads(path.read_text())
        assert entry["compiled_seconds"] == list(timed.compiled_seconds)  # rewritten
    read = compare(lambda: None, lambda: None, [], store=store)
    assert read == timed and read.cached_at == entry["timed_at"]
    assert (cache.hits, cache.stored) == (1, 3)


def test_off_writes_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, rng: np.random.Generator, model: Any
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("KILN_TIMING_CACHE", "off")
    report = _trace(model, rng.normal(size=(1, 32)).astype("float32"))
    assert report["placement"]["timing_cache"] == {"directory": None, "hits": 0, "stored": 0}
    assert list(tmp_path.rglob("*")) == []


def test_an_unwritable_directory_warns_once_and_the_trace_goes_on(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, rng: np.random.Generator,
    caplog: pytest.LogCaptureFixture, model: Any,
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")  # unwritable below it, even for root
    _enable(monkeypatch, blocker / "timing")
    with caplog.at_level(logging.WARNING, logger="kiln_worker.tracer.timing_cache"):
        report = _trace(model, rng.normal(size=(1, 32)).astype("float32"))
    warnings = [r for r in caplog.records if r.name == "kiln_worker.tracer.timing_cache"]
    assert len(warnings) == 1 and "cannot be written" in warnings[0].getMessage()
    assert report["placement"]["timing_cache"]["stored"] == 0
    assert [s["status"] for s in report["subgraphs"]]  # placed (and timed) all the same
