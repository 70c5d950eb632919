"""Build SavedModels whose serving signature touches files (and one that does not), with real
TensorFlow, in a subprocess of the tests: the test process itself never imports TensorFlow.

Usage: python _build_risky_models.py OUT_DIR. Writes OUT_DIR/<name>/ for each model below.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf
import tf_keras

SPEC = [tf.TensorSpec([None, 3], tf.float32, name="x")]


class WriteFile(tf.Module):
    """Writes its input to /tmp, then returns it doubled."""

    @tf.function(input_signature=SPEC)
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        tf.io.write_file("/tmp/kiln_should_never_exist.txt", tf.strings.as_string(x[0, 0]))
        return {"y": x * 2.0}


class ReadFile(tf.Module):
    """Reads /etc/hostname and mixes its length into the output."""

    @tf.function(input_signature=SPEC)
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        n = tf.cast(tf.strings.length(tf.io.read_file("/etc/hostname")), tf.float32)
        return {"y": x + n}


class PrintToFile(tf.Module):
    """Prints its input to a file."""

    @tf.function(input_signature=SPEC)
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        tf.print(x, output_stream="file:///tmp/kiln_print.txt")
        return {"y": x + 1.0}


class PrintToStderr(tf.Module):
    """Prints its input to stderr: allowed (no file)."""

    @tf.function(input_signature=SPEC)
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        tf.print(x)
        return {"y": x + 1.0}


class DatasetReader(tf.Module):
    """Counts the records of a TFRecord file inside the serving function."""

    @tf.function(input_signature=SPEC)
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        ds = tf.data.TFRecordDataset(["/tmp/kiln_records.tfrecord"])
        n = ds.reduce(tf.constant(0, tf.int64), lambda acc, _: acc + 1)
        return {"y": x + tf.cast(n, tf.float32)}


class NestedWrite(tf.Module):
    """Writes a file from inside a tf.cond branch (a function nested in a function)."""

    @tf.function(input_signature=SPEC)
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        def write() -> tf.Tensor:
            tf.io.write_file("/tmp/kiln_nested.txt", "x")
            return x * 3.0

        return {"y": tf.cond(tf.reduce_sum(x) > 0, write, lambda: x)}


class DatasetFromString(tf.Module):
    """Rebuilds a tf.data pipeline from a serialised graph (here harmless: it counts to three)."""

    def __init__(self) -> None:
        super().__init__()
        self.graph = tf.data.Dataset.range(3)._as_serialized_graph().numpy()

    @tf.function(input_signature=SPEC)
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        variant = tf.raw_ops.DatasetFromGraph(graph_def=tf.constant(self.graph))
        ds = tf.data.experimental.from_variant(variant, tf.TensorSpec([], tf.int64))
        return {"y": x + tf.cast(ds.reduce(tf.constant(0, tf.int64), lambda a, b: a + b),
                                 tf.float32)}


class Lookup(tf.Module):
    """A vocabulary lookup table: its load-time init reads the SavedModel's own asset file."""

    def __init__(self, vocab: str) -> None:
        init = tf.lookup.TextFileInitializer(vocab, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                                             tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER)
        self.table = tf.lookup.StaticHashTable(init, -1)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="w")])
    def serve(self, w: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": self.table.lookup(w)}


class _WritesOnLoad(tf.saved_model.experimental.TrackableResource):
    """A resource whose initializer (run by tf.saved_model.load, before any signature) writes a file."""

    def _create_resource(self) -> tf.Tensor:
        return tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[], shared_name="")

    def _initialize(self) -> None:
        tf.io.write_file("/tmp/kiln_written_on_load.txt", "x")


class InitWrite(tf.Module):
    """A harmless serving function; the harm is in the load-time init op."""

    def __init__(self) -> None:
        self.resource = _WritesOnLoad()

    @tf.function(input_signature=SPEC)
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": x * 2.0}


def keras_model() -> tf_keras.Model:
    inputs = tf_keras.Input(shape=(3,), name="x", dtype="float32")
    hidden = tf_keras.layers.Dense(8, activation="relu")(inputs)
    hidden = tf_keras.layers.BatchNormalization()(hidden)
    return tf_keras.Model(inputs, tf_keras.layers.Dense(2)(hidden))


def main(out: str) -> None:
    for name, cls in (("write_file", WriteFile), ("read_file", ReadFile),
                      ("print_to_file", PrintToFile), ("print_to_stderr", PrintToStderr),
                      ("dataset_reader", DatasetReader), ("nested_write", NestedWrite),
                      ("dataset_from_string", DatasetFromString)):
        module = cls()
        tf.saved_model.save(module, os.path.join(out, name), signatures={"serving_default": module.serve})
    keras_model().save(os.path.join(out, "keras_ok"))
    vocab = os.path.join(out, "vocab.txt")
    with open(vocab, "w") as f:
        f.write("a\nb\nc\n")
    for name, module in (("lookup_ok", Lookup(vocab)), ("init_write", InitWrite())):
        tf.saved_model.save(module, os.path.join(out, name), signatures={"serving_default": module.serve})


if __name__ == "__main__":
    main(sys.argv[1])
