"""Example-input generation and the placement spec → subgraph_builder_function (real TensorFlow)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np
import pytest
import tensorflow as tf

from kiln_worker._inputs import JobError, placement_callback, prepare_inputs


def _specs(**shapes: tuple[list[int | None] | None, tf.DType]) -> dict[str, tf.TensorSpec]:
    return {name: tf.TensorSpec(shape, dtype, name=name) for name, (shape, dtype) in shapes.items()}


def test_generated_inputs_follow_the_specs_and_the_seed() -> None:
    specs = _specs(x=([None, 3], tf.float32), ids=([None, 2], tf.int64), mask=([4], tf.bool))
    first = prepare_inputs(specs, None, None, seed=0)
    again = prepare_inputs(specs, None, None, seed=0)
    other = prepare_inputs(specs, None, None, seed=1)
    assert {n: (t.dtype, t.shape.as_list()) for n, t in first.items()} == {
        "x": (tf.float32, [1, 3]), "ids": (tf.int64, [1, 2]), "mask": (tf.bool, [4])}
    for name in specs:
        np.testing.assert_array_equal(first[name].numpy(), again[name].numpy())
    assert not np.array_equal(first["x"].numpy(), other["x"].numpy())
    assert first["ids"].numpy().min() >= 0  # valid indices for lookups


def test_input_shapes_fill_unknown_dimensions() -> None:
    specs = _specs(x=([None, None, 3], tf.float32))
    with pytest.raises(JobError, match="input_shapes") as info:
        prepare_inputs(specs, None, None, seed=0)
    assert info.value.code == "InvalidInputs" and info.value.kind == "client_error"
    got = prepare_inputs(specs, None, {"x": [2, 7, 3]}, seed=0)
    assert got["x"].shape.as_list() == [2, 7, 3]
    with pytest.raises(JobError, match="does not fit"):
        prepare_inputs(specs, None, {"x": [2, 7, 4]}, seed=0)
    with pytest.raises(JobError, match="does not take"):
        prepare_inputs(specs, None, {"y": [1]}, seed=0)


def test_strings_are_generated_as_words() -> None:
    (words,) = prepare_inputs(_specs(s=([None, 2], tf.string)), None, None, seed=0).values()
    assert words.dtype == tf.string and words.shape.as_list() == [1, 2]
    assert all(w and w.isalpha() for w in words.numpy().ravel())


def test_dtypes_that_cannot_be_generated_need_uploaded_inputs() -> None:
    with pytest.raises(JobError, match="upload example_inputs"):
        prepare_inputs(_specs(c=([None], tf.complex64)), None, None, seed=0)


def test_npz_strings_as_text_or_bytes(tmp_path: Path) -> None:
    specs = _specs(s=([None], tf.string))
    np.savez(tmp_path / "text.npz", s=np.array(["café", "b"]))
    np.savez(tmp_path / "bytes.npz", s=np.array([b"caf\xc3\xa9", b"b"]))
    text = prepare_inputs(specs, str(tmp_path / "text.npz"), None, 0)["s"]
    raw = prepare_inputs(specs, str(tmp_path / "bytes.npz"), None, 0)["s"]
    assert text.dtype == tf.string and text.numpy().tolist() == raw.numpy().tolist()
    np.savez(tmp_path / "numbers.npz", s=np.ones((2,), np.float32))
    with pytest.raises(JobError, match="wants string"):
        prepare_inputs(specs, str(tmp_path / "numbers.npz"), None, 0)


def test_npz_inputs_are_checked_against_the_signature(tmp_path: Path) -> None:
    specs = _specs(x=([None, 3], tf.float32))
    np.savez(tmp_path / "ok.npz", x=np.ones((5, 3), np.float32))
    assert prepare_inputs(specs, str(tmp_path / "ok.npz"), None, 0)["x"].shape.as_list() == [5, 3]
    np.savez(tmp_path / "rank.npz", x=np.ones((5,), np.float32))
    with pytest.raises(JobError, match="shape"):
        prepare_inputs(specs, str(tmp_path / "rank.npz"), None, 0)
    np.savez(tmp_path / "name.npz", y=np.ones((5, 3), np.float32))
    with pytest.raises(JobError, match=r"missing \['x'\], unexpected \['y'\]"):
        prepare_inputs(specs, str(tmp_path / "name.npz"), None, 0)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    (tmp_path / "obj.npy").rename(tmp_path / "obj.npz")
    with pytest.raises(JobError, match="cannot read"):
        prepare_inputs(specs, str(tmp_path / "obj.npz"), None, 0)


def _node(name: str, op: str) -> tf.compat.v1.NodeDef:
    return tf.compat.v1.NodeDef(name=name, op=op)


@pytest.mark.parametrize(
    ("placement", "accepted"),
    [
        (None, None),
        ({}, {"dense/MatMul", "dense/Relu", "head/MatMul", "head/Softmax"}),
        ({"mode": "all", "include_ops": [], "exclude_names": []}, None),  # the mode alone decides
        ({"mode": "measured"}, None),
        ({"mode": "measured", "include_ops": ["MatMul"]}, {"dense/MatMul", "head/MatMul"}),
        ({"include_ops": ["MatMul"]}, {"dense/MatMul", "head/MatMul"}),
        ({"exclude_ops": ["Softmax"]}, {"dense/MatMul", "dense/Relu", "head/MatMul"}),
        ({"include_names": ["dense/*"]}, {"dense/MatMul", "dense/Relu"}),
        ({"include_ops": ["MatMul"], "exclude_names": ["head/*"]}, {"dense/MatMul"}),
    ],
)
def test_placement_callback(placement: dict[str, Any] | None, accepted: set[str] | None) -> None:
    nodes = [_node("dense/MatMul", "MatMul"), _node("dense/Relu", "Relu"),
             _node("head/MatMul", "MatMul"), _node("head/Softmax", "Softmax")]
    callback = placement_callback(placement)
    if accepted is None:
        assert callback is None
        return
    assert callback is not None
    assert {n.name for n in nodes if callback(n)} == accepted


def test_npz_strings_with_lengths_keep_their_trailing_nul_bytes(tmp_path: Path) -> None:
    from kiln_client import example_inputs

    records = np.array([[b"ab\x00\x00", b""], [b"\x00", b"c"]], dtype=object)
    np.savez(tmp_path / "whole.npz", **example_inputs.encode("s", records))
    specs = _specs(s=([None, 2], tf.string))
    got = prepare_inputs(specs, str(tmp_path / "whole.npz"), None, 0)["s"]
    assert got.numpy().tolist() == records.tolist()
    lengths = example_inputs.LENGTHS_PREFIX + "s"
    np.savez(tmp_path / "long.npz", s=np.array([[b"ab", b"c"]] * 2), **{lengths: np.full((2, 2), 9)})
    with pytest.raises(JobError, match=r"length 9 .* does not fit"):
        prepare_inputs(specs, str(tmp_path / "long.npz"), None, 0)
