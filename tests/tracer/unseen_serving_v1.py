"""TensorFlow 1 exports for ``test_unseen_serving.py``: what an Estimator's
``export_saved_model`` writes (a v1 graph saved by ``SavedModelBuilder``: a serialized
``tf.train.Example`` placeholder, a vocabulary file as an asset, its table initialised by the
main op, variables of both kinds), loaded by the service with ``tf.saved_model.load``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from tests.tracer.unseen_modules import normal
from tests.tracer.unseen_serving_modules import CLASSES, COUNTRIES, serialized_examples

v1 = tf.compat.v1
_FEATURES = {
    "age": tf.io.FixedLenFeature([1], tf.float32),
    "country": tf.io.FixedLenFeature([], tf.string, default_value="??"),
    "tags": tf.io.VarLenFeature(tf.int64),
}


class EstimatorExport:
    """What the case hands ``trace`` in memory: nothing (the model is only a SavedModel)."""


def _network(parsed: dict[str, Any], vocabulary: Path) -> dict[str, tf.Tensor]:
    filename = tf.constant(str(vocabulary), name="vocabulary")
    v1.add_to_collection(v1.GraphKeys.ASSET_FILEPATHS, filename)  # as feature columns do
    table = tf.lookup.StaticVocabularyTable(
        tf.lookup.TextFileInitializer(filename, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                                      tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER), 1)
    country = v1.Variable(normal(len(COUNTRIES) + 1, 3, seed=4), name="country", use_resource=False)
    tags = v1.get_variable("tags", initializer=normal(10, 4, seed=3), use_resource=True)
    hidden = v1.get_variable("hidden", initializer=normal(8, 3, seed=5) * 0.5)
    x = tf.concat([tf.gather(country, table.lookup(parsed["country"])),
                   tf.nn.safe_embedding_lookup_sparse(tags, parsed["tags"], combiner="sqrtn"),
                   tf.math.log(parsed["age"])], axis=1)
    logits = x @ hidden
    names = tf.constant(CLASSES)
    return {"probabilities": tf.nn.softmax(logits),
            "classes": tf.gather(names, tf.argmax(logits, axis=1))}


def save_estimator_export(_model: Any, directory: Path) -> Path:
    """Build the v1 graph and save it as ``export_saved_model`` does."""
    vocabulary = directory.parent / "countries.txt"
    vocabulary.write_text("\n".join(COUNTRIES) + "\n")
    graph = tf.Graph()
    with graph.as_default():
        examples = v1.placeholder(tf.string, [None], name="input_example_tensor")
        outputs = _network(tf.io.parse_example(examples, _FEATURES), vocabulary)
        with v1.Session(graph=graph) as session:
            session.run([v1.global_variables_initializer(), v1.tables_initializer()])
            builder = v1.saved_model.Builder(str(directory))
            signature = v1.saved_model.predict_signature_def({"examples": examples}, outputs)
            builder.add_meta_graph_and_variables(
                session, [v1.saved_model.SERVING], signature_def_map={"serving_default": signature},
                main_op=v1.tables_initializer(), strip_default_attrs=True,
                assets_collection=v1.get_collection(v1.GraphKeys.ASSET_FILEPATHS))
            builder.save()
    vocabulary.unlink()  # the SavedModel carries its own copy (an asset)
    return directory


def examples(batch: int, seed: int) -> dict[str, np.ndarray]:
    return {"examples": serialized_examples(batch, seed)}


def save_v1_rnn_export(_model: Any, directory: Path) -> Path:
    """A TF1.x RNN export: ``dynamic_rnn`` built with v1 control flow (Enter/Exit/NextIteration
    frames and TensorArrayV3, as TensorFlow 1.15 wrote every loop)."""
    graph = tf.Graph()
    v1.disable_control_flow_v2()
    try:
        with graph.as_default():
            steps = v1.placeholder(tf.float32, [None, 5, 4], name="steps")
            v1.set_random_seed(0)
            cell = v1.nn.rnn_cell.BasicRNNCell(6)
            _, state = v1.nn.dynamic_rnn(cell, steps, dtype=tf.float32)
            head = v1.get_variable("head", initializer=normal(6, 2, seed=2))
            outputs = {"logits": state @ head, "state": state}
            _save_session(graph, directory, {"steps": steps}, outputs)
    finally:
        v1.enable_control_flow_v2()
    return directory


def _save_session(graph: tf.Graph, directory: Path, inputs: dict[str, Any],
                  outputs: dict[str, Any]) -> None:
    with v1.Session(graph=graph) as session:
        session.run(v1.global_variables_initializer())
        builder = v1.saved_model.Builder(str(directory))
        signature = v1.saved_model.predict_signature_def(inputs, outputs)
        builder.add_meta_graph_and_variables(
            session, [v1.saved_model.SERVING], signature_def_map={"serving_default": signature})
        builder.save()


def rnn_steps(batch: int, seed: int) -> dict[str, np.ndarray]:
    return {"steps": normal(batch, 5, 4, seed=seed)}
