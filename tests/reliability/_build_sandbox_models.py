"""Build SavedModels that try to escape the compile sandbox, hiding what they do from the op scan.

Each serving function runs a tf.data pipeline rebuilt at run time from a serialised graph string
(``tf.raw_ops.DatasetFromGraph``): the file and network ops live inside that string, where no
graph scan looks. Run in a subprocess of the tests (the test process never imports TensorFlow).

Usage: python _build_sandbox_models.py OUT_DIR SPEC.json, where SPEC holds
``{"read": [paths], "globs": [patterns], "write": [paths]}``. Writes OUT_DIR/<name>/model.tar.gz
and example_inputs.npz for ``reader``, ``writer``, ``threads`` (a thread bomb) and ``plain`` (a
stand-in the op scan accepts).
"""

from __future__ import annotations

import json
import os
import sys
import tarfile

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

SPEC = [tf.TensorSpec([None, 3], tf.float32, name="x")]
STRING = tf.TensorSpec([], tf.string)


def _reader_graph(paths: list[str], globs: list[str]) -> bytes:
    """A dataset of ``path=content`` for every readable file among ``paths`` and ``globs``."""
    named = tf.data.Dataset.from_tensor_slices(tf.constant(paths or ["/nonexistent"]))
    globbed = tf.data.Dataset.from_tensor_slices(tf.constant(globs or ["/nonexistent"])).flat_map(
        lambda g: tf.data.Dataset.from_tensor_slices(tf.io.matching_files(g)))
    contents = named.concatenate(globbed).map(  # the first 100 bytes of each file are proof
        lambda p: tf.strings.join([p, tf.strings.substr(tf.io.read_file(p), 0, 100)],
                                  separator="=")).ignore_errors()
    return contents._as_serialized_graph().numpy()


def _writer_graph(targets: list[str]) -> bytes:
    def write(p: tf.Tensor) -> tf.Tensor:
        with tf.control_dependencies([tf.io.write_file(p, "escaped")]):
            return tf.identity(p)

    return tf.data.Dataset.from_tensor_slices(tf.constant(targets)).map(write) \
        ._as_serialized_graph().numpy()


class Hidden(tf.Module):
    """Runs a dataset rebuilt from ``graph`` and prints what it yields to stderr (the job log)."""

    def __init__(self, graph: bytes) -> None:
        super().__init__()
        self.graph = graph

    @tf.function(input_signature=SPEC)
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        # Joined with an empty string computed from x, so that grappler cannot fold the
        # dataset into a constant at load time (a dataset variant cannot be serialised).
        nothing = tf.strings.substr(tf.strings.as_string(x[0, 0]), 0, 0)
        graph = tf.strings.join([tf.constant(self.graph), nothing])
        variant = tf.raw_ops.DatasetFromGraph(graph_def=graph)
        ds = tf.data.experimental.from_variant(variant, STRING)
        joined = ds.reduce(tf.constant(""), lambda acc, s: tf.strings.join([acc, s], "\n"))
        tf.print("KILN-LEAK-BEGIN", joined, "KILN-LEAK-END", summarize=-1)
        return {"y": x + tf.cast(tf.strings.length(joined), tf.float32) * 0.0}


class ThreadBomb(tf.Module):
    """A tf.data pipeline with a private pool of 8000 threads, started when the model runs."""

    @tf.function(input_signature=SPEC)
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        options = tf.data.Options()
        options.threading.private_threadpool_size = 8000
        ds = tf.data.Dataset.range(8000).map(lambda i: i * 2, num_parallel_calls=8000)
        total = ds.with_options(options).reduce(tf.constant(0, tf.int64), lambda a, b: a + b)
        return {"y": x + tf.cast(total, tf.float32) * 0.0}


class Plain(tf.Module):
    """The same signature doing plain arithmetic: what a job is submitted with before its stored
    upload is swapped for an escaping model (the op scan refuses those at upload)."""

    @tf.function(input_signature=SPEC)
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": x * 2.0}


def _save(module: tf.Module, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    tf.saved_model.save(module, os.path.join(out, "model"),
                        signatures={"serving_default": module.serve})
    with tarfile.open(os.path.join(out, "model.tar.gz"), "w:gz") as tar:
        tar.add(os.path.join(out, "model"), arcname="model")
    np.savez(os.path.join(out, "example_inputs.npz"), x=np.ones((1, 3), np.float32))


def main(out: str, spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    _save(Hidden(_reader_graph(spec.get("read", []), spec.get("globs", []))),
          os.path.join(out, "reader"))
    if spec.get("write"):
        _save(Hidden(_writer_graph(spec["write"])), os.path.join(out, "writer"))
    _save(ThreadBomb(), os.path.join(out, "threads"))
    _save(Plain(), os.path.join(out, "plain"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
