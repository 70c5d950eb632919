"""A second probe of models the zoo and ``test_unseen_models.py`` did not cover, on the user's path.

State and side effects inside the call (a call counter, random ops, prints and assertions),
Python callbacks, ``map_fn``/``vectorized_map``, image, sorting, bitwise, segment and linear
algebra ops, an STFT, dtypes not probed before (uint16/32/64, int8, complex64, bool alone),
awkward signature names, several signatures, nested outputs, composite tensors, and Keras layers
(MobileNetV3Small, Conv3D, masking, bidirectional and custom RNNs, attention scores). Each case is
traced in memory and through save → ``tf.saved_model.load`` → trace the serving signature → save
→ reload → serve at another batch (``tests/tracer/unseen_cases.py``). The hand-written modules
live in ``tests/tracer/unseen_modules_2.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tests.tracer import unseen_modules_2 as modules
from tests.tracer.roundtrip import assert_close
from tests.tracer.unseen_cases import Case, case_marks, check_case, shaped
from tests.tracer.unseen_modules import normal

import kiln_worker
from kiln_worker.tracer.errors import TraceInputError, UnsupportedModelError

layers = tf.keras.layers


# --- Keras models ------------------------------------------------------------------------------


def _mobilenet_v3() -> Any:
    tf.keras.utils.set_random_seed(0)
    return tf.keras.applications.MobileNetV3Small(
        weights=None, input_shape=(32, 32, 3), classes=5, include_preprocessing=True)


def _conv3d() -> Any:
    inputs = tf.keras.Input((4, 8, 8, 2))
    x = layers.Conv3D(4, 3, padding="same", activation="relu")(inputs)
    x = layers.MaxPool3D(2)(x)
    x = layers.Conv3DTranspose(2, 2, strides=2)(x)
    return tf.keras.Model(inputs, layers.Dense(2)(layers.GlobalAveragePooling3D()(x)))


def _masking_lstm() -> Any:
    inputs = tf.keras.Input((6, 3))
    x = layers.Masking(mask_value=0.0)(inputs)
    return tf.keras.Model(inputs, layers.Dense(2)(layers.LSTM(5)(x)))


def _masked_steps(batch: int, seed: int) -> np.ndarray:
    x = normal(batch, 6, 3, seed=seed)
    x[0, 4:] = 0.0
    x[-1, 1:] = 0.0
    return x


def _stacked_bidirectional() -> Any:
    inputs = tf.keras.Input((5, 4))
    x = layers.Bidirectional(layers.LSTM(4, return_sequences=True))(inputs)
    x = layers.Bidirectional(layers.GRU(3, return_sequences=True), merge_mode="sum")(x)
    return tf.keras.Model(inputs, layers.TimeDistributed(layers.Dense(2))(x))


def _gru_v1() -> Any:
    inputs = tf.keras.Input((5, 4))
    x = layers.GRU(6, reset_after=False, return_sequences=True)(inputs)
    return tf.keras.Model(inputs, layers.GRU(3, reset_after=False)(x))


class _MinimalCell(layers.Layer):  # type: ignore[misc]
    """A hand-written RNN cell (the Keras guide's MinimalRNNCell, with a leak)."""

    def __init__(self, units: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units = units
        self.state_size = units

    def build(self, input_shape: Any) -> None:
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel")
        self.recurrent = self.add_weight(shape=(self.units, self.units), name="recurrent")

    def call(self, inputs: tf.Tensor, states: list[tf.Tensor]) -> tuple[tf.Tensor, list[tf.Tensor]]:
        h = 0.5 * states[0] + tf.tanh(inputs @ self.kernel + states[0] @ self.recurrent)
        return h, [h]


def _custom_rnn() -> Any:
    inputs = tf.keras.Input((5, 3))
    x = layers.RNN(_MinimalCell(4), return_sequences=True)(inputs)
    return tf.keras.Model(inputs, layers.Dense(2)(x))


def _attention_scores() -> Any:
    query, value = tf.keras.Input((3, 4), name="query"), tf.keras.Input((5, 4), name="value")
    attended, scores = layers.Attention()([query, value], return_attention_scores=True)
    mha, mha_scores = layers.MultiHeadAttention(2, 4)(
        query, value, return_attention_scores=True)
    return tf.keras.Model({"query": query, "value": value},
                          {"attended": attended, "scores": scores, "mha": mha,
                           "mha_scores": mha_scores})


def _attention_inputs(batch: int, seed: int) -> dict[str, np.ndarray]:
    return {"query": normal(batch, 3, 4, seed=seed), "value": normal(batch, 5, 4, seed=seed + 1)}


def _mha_mask() -> Any:
    tokens, mask = tf.keras.Input((6, 8), name="tokens"), tf.keras.Input((6, 6), name="mask")
    x = layers.MultiHeadAttention(2, 4)(tokens, tokens, attention_mask=mask)
    return tf.keras.Model({"tokens": tokens, "mask": mask}, layers.Dense(3)(x + tokens))


def _mha_inputs(batch: int, seed: int) -> dict[str, np.ndarray]:
    mask = np.tril(np.ones((6, 6), "float32"))[None].repeat(batch, 0)
    mask[0, :, 4:] = 0.0
    return {"tokens": normal(batch, 6, 8, seed=seed), "mask": mask}


class _TwoHeads(tf.keras.Model):  # type: ignore[misc]
    """A subclassed model with a dict of outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = layers.Dense(8, activation="relu")
        self.dropout = layers.Dropout(0.4)
        self.label = layers.Dense(3)
        self.box = layers.Dense(4, activation="sigmoid")

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> dict[str, tf.Tensor]:
        x = self.dropout(self.trunk(inputs), training=training)
        return {"label": self.label(x), "box": self.box(x)}


def _two_heads() -> Any:
    model = _TwoHeads()
    model(tf.zeros((1, 6)))
    return model


def _awkward_keras() -> Any:
    pixels = tf.keras.Input((4,), name="pixel-values")
    mask = tf.keras.Input((4,), name="mask.v2")
    y = layers.Dense(3)(layers.Multiply()([pixels, mask]))
    return tf.keras.Model({"pixel-values": pixels, "mask.v2": mask},
                          {"class scores": y, "0th": layers.Softmax()(y)})


def _awkward_keras_inputs(batch: int, seed: int) -> dict[str, np.ndarray]:
    return modules.awkward_inputs(batch, seed)


# --- the cases ---------------------------------------------------------------------------------


#: every supported op compiled, nothing timed: XLA's QR and SVD are tried (and differ in sign)
_ALL: dict[str, Any] = {"trace_kwargs": {"placement": "all"}}

CASES: dict[str, Case] = {
    "mobilenet_v3_small": Case(_mobilenet_v3, shaped(32, 32, 3), slow=True),
    "conv3d_transpose": Case(_conv3d, shaped(4, 8, 8, 2)),
    "masking_lstm": Case(_masking_lstm, _masked_steps),
    "stacked_bidirectional": Case(_stacked_bidirectional, shaped(5, 4), slow=True),
    "gru_reset_after_false": Case(_gru_v1, shaped(5, 4)),
    "custom_rnn_cell": Case(_custom_rnn, shaped(5, 3)),
    "attention_return_scores": Case(_attention_scores, _attention_inputs),
    "multi_head_attention_mask": Case(_mha_mask, _mha_inputs),
    "subclassed_dict_outputs": Case(_two_heads, shaped(6)),
    "stateless_random": Case(modules.NoisyStateless, shaped(4)),
    "print_and_assert": Case(modules.PrintAndAssert, shaped(4)),
    "map_fn_vectorized_map": Case(modules.MapFunctions, shaped(3, 4)),
    "image_resize_crop_flip": Case(modules.ImageOps, shaped(8, 8, 3)),
    "sort_argsort_cumsum_cumprod": Case(modules.SortAndScan, shaped(6)),
    "bitwise_int32_uint8": Case(modules.BitwiseOps, lambda b, s: {
        "a": np.random.default_rng(s).integers(-500, 500, (b, 5)).astype("int32"),
        "b": np.random.default_rng(s + 1).integers(0, 256, (b, 5)).astype("uint8")}),
    "sorted_segment_ops": Case(modules.SegmentOps, modules.segment_inputs),
    "qr_svd_inverse_det": Case(modules.Decompositions, shaped(4, 4), **_ALL),
    "eigh_eigenvectors": Case(modules.SymmetricEigen, shaped(3, 3)),
    "bucketize_histogram_checks": Case(modules.BucketsAndChecks, shaped(6)),
    "stft_spectrogram": Case(modules.ShortTimeFourier, shaped(64)),
    "uint16_uint32_uint64": Case(modules.UnsignedInputs, modules.unsigned_inputs),
    "int8_input": Case(modules.QuantizedInput, modules.int8_inputs),
    "complex64_input": Case(modules.ComplexInput, modules.complex_inputs),
    "bool_input_alone": Case(modules.BoolOnly, modules.bool_inputs),
    # the service's path: example inputs keyed by the signature's names ('pixel-values')
    "awkward_signature_names": Case(modules.AwkwardNames, modules.awkward_inputs, in_memory=False),
    "keras_awkward_input_names": Case(_awkward_keras, _awkward_keras_inputs),
    "several_signatures_serving_last": Case(modules.SeveralSignatures, modules.named_x,
                                            save=modules.save_several_signatures),
    # a composite input through a SavedModel: the signature takes its component tensors
    "sparse_input_signature": Case(modules.SparseInput, modules.sparse_components,
                                   in_memory=False),
    "ragged_input_signature": Case(
        modules.RaggedInput, modules.ragged_components, in_memory=False,
        xfail="the dynamic-batch check runs the model at twice the example rows, each row "
        "repeated; repeated row_splits are invalid for the repeated flat_values, so the model "
        "keeps a fixed batch (the number of flat values)"),
    "python_callbacks": Case(modules.PythonCallback, shaped(4)),
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=case_marks(c)) for n, c in CASES.items()])
def test_unseen_model_round_trips(name: str, tmp_path: Path) -> None:
    check_case(CASES[name], tmp_path)


# --- what cannot be compared value for value, or cannot work ------------------------------------


def _loaded_signature(module: tf.Module, directory: Path) -> Any:
    tf.saved_model.save(module, str(directory))
    return tf.saved_model.load(str(directory))


@pytest.mark.parametrize("where", ["in memory", "saved model"])
def test_variable_written_in_the_call_is_refused_naming_it(where: str, tmp_path: Path) -> None:
    module = modules.CallCounter()
    x = normal(2, 4)
    loaded = _loaded_signature(module, tmp_path / "m") if where == "saved model" else None
    func = loaded.signatures["serving_default"] if loaded else module
    with pytest.raises(UnsupportedModelError) as caught:
        kiln_worker.trace(func, {"x": x} if loaded else x)
    message = str(caught.value)
    assert caught.value.pass_name == "freeze"
    assert "writes to variables" in message and "AssignAddVariableOp" in message, message
    assert "Variable" in message and "only reads its variables" in message, message


def test_stateful_rnn_is_refused_naming_its_state() -> None:
    inputs = tf.keras.Input(batch_shape=(2, 3, 4))
    model = tf.keras.Model(inputs, layers.LSTM(3, stateful=True, name="stateful_lstm")(inputs))
    with pytest.raises(UnsupportedModelError, match=r"stateful_lstm/Variable.*AssignVariableOp"):
        kiln_worker.trace(model, normal(2, 3, 4))


def test_random_draws_stay_random_and_the_rest_is_checked(tmp_path: Path) -> None:
    """tf.random.uniform in the call: the draw is compared by shape (the report says so), the
    deterministic output by value; the traced model keeps drawing and takes any batch."""
    module = modules.NoisyStateful()
    x, other = normal(2, 4), normal(3, 4, seed=1)
    traced = kiln_worker.trace(module, x)
    check = traced.report["numerical_check"]
    assert check["within_tolerance"] and traced.report["batch_mode"] == "dynamic", check
    assert check["outputs"]["noise"]["nondeterministic"], check
    assert "nondeterministic" not in check["outputs"]["y"], check
    first, second = traced(x), traced(x)
    assert_close("deterministic output", module(x)["y"], first["y"], 1e-3)
    assert not np.array_equal(first["noise"], second["noise"])
    loaded = _loaded_signature(module, tmp_path / "m")
    saved = kiln_worker.trace(loaded.signatures["serving_default"], {"x": x})
    saved.save(str(tmp_path / "traced"))
    served = tf.saved_model.load(str(tmp_path / "traced")).signatures["serving_default"](
        x=tf.constant(other))
    assert_close("served at another batch", module(other)["y"], served["y"], 1e-3)
    noise = served["noise"].numpy()
    assert noise.shape == (3, 4) and (noise >= 0).all() and (noise < 1).all()


def test_python_callbacks_run_in_memory_and_say_they_do_not_deploy() -> None:
    traced = kiln_worker.trace(modules.PythonCallback(), normal(2, 4))
    assert traced.report["numerical_check"]["within_tolerance"]
    warning = next(w for w in traced.report["warnings"] if "Python functions" in w)
    assert "PyFunc" in warning and "runs only in this Python process" in warning, warning


_TRACE_LOADED = """
import sys, numpy as np, tensorflow as tf, kiln_worker
from kiln_worker.tracer.errors import UnsupportedModelError
loaded = tf.saved_model.load(sys.argv[1])
try:
    kiln_worker.trace(loaded.signatures["serving_default"], {"x": np.ones((2, 4), "float32")})
except UnsupportedModelError as e:
    print("REFUSED", e)
"""


def test_python_callback_in_a_saved_model_elsewhere_is_a_clear_error(tmp_path: Path) -> None:
    """The service's child loads the SavedModel in another process, where the Python function
    behind tf.numpy_function does not exist: the error names it and what to do."""
    tf.saved_model.save(modules.PythonCallback(), str(tmp_path / "m"))
    proc = subprocess.run([sys.executable, "-c", _TRACE_LOADED, str(tmp_path / "m")],
                          capture_output=True, text=True, timeout=300, env={**os.environ})
    assert "REFUSED" in proc.stdout, proc.stderr[-3000:]
    assert "[inputs]" in proc.stdout and "tf.numpy_function" in proc.stdout, proc.stdout
    assert "node PyFunc" in proc.stdout and "Write it with TensorFlow ops" in proc.stdout


def _sparse_example() -> tf.SparseTensor:
    return tf.sparse.from_dense(normal(2, 10) * (normal(2, 10, seed=3) > 0.5))


@pytest.mark.parametrize(("build", "example", "expected"), [
    (modules.SparseInput, _sparse_example, r"example input is a tf.SparseTensor.*sparse.to_dense"),
    (modules.RaggedInput,
     lambda: tf.ragged.constant([[[1.0, 2, 3]], [[1, 2, 3], [4, 5, 6]]], ragged_rank=1),
     r"example input is a tf.RaggedTensor.*to_tensor\(\)"),
    (modules.CtcDecoder, lambda: normal(2, 6, 4),
     r"^\[inputs\] func's output '0' is a tf.SparseTensor.*sparse.to_dense"),
], ids=["sparse_input", "ragged_input", "ctc_greedy_decoder_sparse_output"])
def test_composite_tensors_are_refused_naming_them(build: Any, example: Any, expected: str) -> None:
    with pytest.raises(TraceInputError, match=expected):
        kiln_worker.trace(build(), example())


def test_subgraph_off_tensorflow_goes_back_to_cpu() -> None:
    """XLA's eigenvectors differ from TensorFlow's (another sign): the subgraph computing them is
    put back on CPU with the reason, and the traced model matches the original."""
    module, x = modules.SymmetricEigen(), normal(2, 3, 3)
    traced = kiln_worker.trace(module, x, placement="all")
    assert traced.report["numerical_check"]["within_tolerance"], traced.report["numerical_check"]
    (eigen,) = [s for s in traced.report["subgraphs"] if "SelfAdjointEigV2" in s["op_types"]]
    assert eigen["status"] == "fallback_cpu", eigen
    assert eigen["reason"].startswith("its outputs differ from TensorFlow's"), eigen["reason"]
    assert "max abs diff" in eigen["reason"], eigen["reason"]


def test_nested_outputs_keep_their_structure(tmp_path: Path) -> None:
    """A (tensor, {"max", "parts": [a, b]}) result: the same nest in memory and reloaded."""
    module = modules.NestedOutputs()
    x, other = normal(2, 4), normal(3, 4, seed=1)
    traced = kiln_worker.trace(module, x)
    assert traced.report["batch_mode"] == "dynamic"
    got = traced(x)
    tf.nest.assert_same_structure(module(x), got)
    assert_close("in memory", module(x), got, 1e-3)
    traced.save(str(tmp_path / "traced"))
    reloaded = tf.keras.models.load_model(str(tmp_path / "traced"))
    assert_close("reloaded at another batch", module(other), reloaded(other), 1e-3)
