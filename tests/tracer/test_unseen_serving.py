"""Serving signatures production users upload, on the user's path (``check_case``).

What TF Serving users export: encoded JPEG/PNG bytes decoded inside the model, serialized
``tf.train.Example`` protos parsed inside it (a sparse feature, string lookups, a string output),
base64 text taken apart with string ops, loops whose trip count depends on the values, uint8
images preprocessed inside a Keras model with an id passed through, scalar parameters (top-k's
``k``, a temperature) next to the batch, Keras models saved with a serving function of their own
(image bytes; feature columns over tf.Example), and TF1 exports (an Estimator's, a dynamic_rnn's;
``tests/tracer/unseen_serving_v1.py``). Each is traced in memory and through save →
``tf.saved_model.load`` → trace the serving signature → save → reload → serve at another batch.
The hand-written modules live in ``tests/tracer/unseen_serving_modules.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf
from tests.tracer import unseen_serving_modules as modules
from tests.tracer import unseen_serving_v1 as v1
from tests.tracer.unseen_cases import Case, case_marks, check_case
from tests.tracer.unseen_modules import normal

import kiln_worker

layers = tf.keras.layers


def _uint8_classifier() -> Any:
    """uint8 NHWC in, MobileNetV2's preprocessing inside, an int64 id passed through."""
    tf.keras.utils.set_random_seed(0)
    image = tf.keras.Input((16, 16, 3), dtype="uint8", name="image")
    key = tf.keras.Input((), dtype="int64", name="key")
    x = tf.keras.applications.mobilenet_v2.preprocess_input(tf.cast(image, "float32"))
    x = layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(layers.BatchNormalization()(x))
    probs = layers.Dense(5, activation="softmax")(x)
    return tf.keras.Model({"image": image, "key": key}, {"probabilities": probs, "key": key})


def _uint8_inputs(batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 256, (batch, 16, 16, 3)).astype("uint8"),
            "key": (np.arange(batch) + 10**12 + seed * 100).astype("int64")}


CASES: dict[str, Case] = {
    "encoded_jpeg_png_map_fn": Case(modules.EncodedImages, modules.encoded_images),
    "decode_jpeg_map_fn": Case(modules.JpegOnly, modules.jpeg_images),
    "serialized_tf_example": Case(modules.ParsedExamples, modules.serialized_examples),
    "base64_string_ops": Case(modules.Base64Text, modules.base64_text),
    "data_dependent_loops": Case(modules.DataDependentLoops, modules.loop_inputs),
    "uint8_image_id_passthrough": Case(_uint8_classifier, _uint8_inputs),
    "top_k_and_temperature_scalars": Case(modules.TopK, modules.top_k_inputs),
    "keras_custom_serving_function": Case(modules.BytesServing, modules.bytes_and_keys,
                                          save=modules.save_with_serving_function,
                                          fresh_process=True),
    "keras_dense_features_tf_example": Case(modules.FeatureColumnServing,
                                            modules.named_examples,
                                            save=modules.save_with_serving_function, slow=True),
    # the model exists only as a SavedModel: the service's leg alone
    "estimator_v1_export": Case(v1.EstimatorExport, v1.examples, in_memory=False,
                                save=v1.save_estimator_export),
    "tf1_dynamic_rnn_export": Case(v1.EstimatorExport, v1.rnn_steps, in_memory=False,
                                   save=v1.save_v1_rnn_export),
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=case_marks(c)) for n, c in CASES.items()])
def test_serving_signature_round_trips(name: str, tmp_path: Path) -> None:
    check_case(CASES[name], tmp_path)


def test_map_fn_decoding_on_cpu_leaves_the_conv_net_compiled() -> None:
    """The decoding loop stays on CPU; the TensorList it fills must not cross into the conv
    net's subgraph (XLA refuses a variant at the boundary, and the whole net went back to CPU):
    the TensorList ops at the edge stay on CPU, naming why, and the conv net is compiled."""
    traced = kiln_worker.trace(modules.EncodedImages(), modules.encoded_images(2, 0),
                               placement="all")
    report = traced.report
    (conv,) = [s for s in report["subgraphs"] if "Conv2D" in s["op_types"]]
    assert conv["status"] == "compiled", conv
    assert "TensorListStack" not in conv["op_types"], conv
    stack = next(op for op in report["cpu_ops"] if op["op"] == "TensorListStack")
    assert "TensorList (variant)" in stack["reason"] and "map/while" in stack["reason"], stack
    assert report["numerical_check"]["within_tolerance"], report["numerical_check"]


@pytest.mark.parametrize(("save", "inputs", "compiled_op"), [
    (v1.save_estimator_export, v1.examples, "MatMul"),
    (v1.save_v1_rnn_export, v1.rnn_steps, None),
], ids=["estimator_export", "tf1_loops"])
def test_tf1_export_compiles_what_it_can(save: Any, inputs: Any, compiled_op: str | None,
                                         tmp_path: Path) -> None:
    """A TF1 export's signature is made a TF2 function: its dense part is compiled, its table
    read on CPU; a graph with v1 loops (Enter/Exit frames) runs on CPU whole, saying why."""
    loaded = tf.saved_model.load(str(save(None, tmp_path / "m")))
    traced = kiln_worker.trace(loaded.signatures["serving_default"], inputs(2, 0),
                               placement="all")
    report = traced.report
    assert report["numerical_check"]["within_tolerance"], report["numerical_check"]
    compiled = [s for s in report["subgraphs"] if s["status"] == "compiled"]
    cpu = {op["op"]: op["reason"] for op in report["cpu_ops"]}
    if compiled_op:
        assert any(compiled_op in s["op_types"] for s in compiled), report["subgraphs"]
        assert cpu["LookupTableFindV2"].startswith("lookup table"), cpu
    else:
        assert "Enter: unsupported op type" in cpu["StatefulPartitionedCall"], cpu


def test_example_inputs_are_sane() -> None:
    """The probes' inputs exercise what they claim: both image formats, a default country."""
    images = modules.encoded_images(2, 0)
    assert images[0][:2] == b"\xff\xd8" and images[1][:4] == b"\x89PNG"
    parsed = tf.io.parse_example(modules.serialized_examples(3, 0),
                                 {"country": tf.io.FixedLenFeature([], tf.string, "??")})
    assert parsed["country"].numpy()[1] == b"??"
    assert normal(1, 1).dtype == np.float32
