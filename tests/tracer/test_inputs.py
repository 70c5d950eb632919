"""Calling conventions (seed point 1): Keras 2 and 3 models, tf.functions, ConcreteFunctions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tests.tracer.conftest import max_rel_diff


def test_keras2_model_matches_original(rng: np.random.Generator) -> None:
    import tensorflow as tf
    import tf_keras

    import kiln_worker

    inputs = tf.keras.Input(8)
    hidden = tf.keras.layers.Dense(16, activation="tanh")(inputs)
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(4)(hidden))
    x = rng.normal(size=(2, 8)).astype("float32")
    traced = kiln_worker.trace(model, x, subgraph_builder_function=lambda node: True)
    assert isinstance(traced, tf_keras.Model)
    assert max_rel_diff(model(x), traced(x)) < 1e-5
    assert traced.report["numerical_check"]["within_tolerance"]
    assert [s["status"] for s in traced.report["subgraphs"]] == ["compiled"]


def test_keras3_model_is_traced(rng: np.random.Generator) -> None:
    import keras

    import kiln_worker

    assert keras.__version__.startswith("3")
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(12, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(hidden))
    x = rng.normal(size=(1, 6)).astype("float32")
    traced = kiln_worker.trace(model, x, subgraph_builder_function=lambda node: True)
    assert max_rel_diff(np.asarray(model(x)), traced(x)) < 1e-5
    assert traced.report["ops_on_accelerator"] > 0


def test_tf_function_with_tuple_inputs(rng: np.random.Generator) -> None:
    import tensorflow as tf

    import kiln_worker

    @tf.function
    def func(a, b):  # type: ignore[no-untyped-def]
        return tf.nn.relu(tf.matmul(a, b) + 1.0)

    a = tf.constant(rng.normal(size=(2, 3)).astype("float32"))
    b = tf.constant(rng.normal(size=(3, 4)).astype("float32"))
    traced = kiln_worker.trace(func, (a, b), subgraph_builder_function=lambda n: True)
    assert max_rel_diff(func(a, b), traced((a, b))) < 1e-6
    assert max_rel_diff(func(a, b), traced(a, b)) < 1e-6


def test_tf_function_with_dict_inputs_and_dict_outputs(rng: np.random.Generator) -> None:
    import tensorflow as tf

    import kiln_worker

    @tf.function
    def func(left, right):  # type: ignore[no-untyped-def]
        return {"sum": left + right, "prod": tf.tanh(left * right)}

    x = {
        "left": rng.normal(size=(2, 5)).astype("float32"),
        "right": rng.normal(size=(2, 5)).astype("float32"),
    }
    traced = kiln_worker.trace(func, x, subgraph_builder_function=lambda n: True)
    out = traced(x)
    assert set(out) == {"sum", "prod"}
    expected = func(**x)
    for key in out:
        assert max_rel_diff(expected[key], out[key]) < 1e-6


def test_keras_model_with_dict_inputs_gets_the_dict(rng: np.random.Generator) -> None:
    import tensorflow as tf

    import kiln_worker

    a = tf.keras.Input(4, name="a")
    b = tf.keras.Input(4, name="b")
    merged = tf.keras.layers.Concatenate()([a, b])
    model = tf.keras.Model({"a": a, "b": b}, tf.keras.layers.Dense(2)(merged))
    x = {
        "a": rng.normal(size=(1, 4)).astype("float32"),
        "b": rng.normal(size=(1, 4)).astype("float32"),
    }
    traced = kiln_worker.trace(model, x, subgraph_builder_function=lambda n: True)
    assert max_rel_diff(model(x), traced(x)) < 1e-5


def test_subclassed_keras_model_reading_a_dict_gets_the_dict(rng: np.random.Generator) -> None:
    """A subclassed model has no ``input`` to say it takes a dict; its ``call(inputs)`` cannot
    take the keys as keywords, so it gets the dict (keywords it can take are passed as such)."""
    import tensorflow as tf

    import kiln_worker

    class DictCall(tf.keras.Model):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.image, self.meta = tf.keras.layers.Dense(3), tf.keras.layers.Dense(3)

        def call(self, inputs: dict[str, tf.Tensor], training: bool | None = None) -> tf.Tensor:
            return self.image(inputs["image"]) * self.meta(inputs["meta"])

    class Keywords(tf.keras.Model):  # type: ignore[misc]
        def call(self, image: tf.Tensor, meta: tf.Tensor, training: bool | None = None) -> Any:
            return image[:, :3] - meta

    x = {"image": rng.normal(size=(2, 5)).astype("float32"),
         "meta": rng.normal(size=(2, 3)).astype("float32")}
    for model, expected in ((DictCall(), lambda m: m(x)), (Keywords(), lambda m: m(**x))):
        traced = kiln_worker.trace(model, x)
        assert max_rel_diff(expected(model), traced(x)) < 1e-5, type(model).__name__


def test_list_inputs_and_list_outputs(rng: np.random.Generator) -> None:
    import tensorflow as tf

    import kiln_worker

    def func(pair):  # type: ignore[no-untyped-def]
        return [pair[0] * 2.0, tf.reduce_sum(pair[1], axis=1)]

    x = [rng.normal(size=(3, 2)).astype("float32"), rng.normal(size=(3, 4)).astype("float32")]
    traced = kiln_worker.trace(func, x)
    out = traced(x)
    assert isinstance(out, list) and len(out) == 2
    assert max_rel_diff(func(x)[1], out[1]) < 1e-6


def test_loaded_saved_model_signature_takes_keywords(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    import tensorflow as tf

    import kiln_worker

    inputs = tf.keras.Input(5, name="features")
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(3, activation="sigmoid")(inputs))
    model.save(str(tmp_path / "orig"))
    loaded = tf.saved_model.load(str(tmp_path / "orig"))  # keeps the variables alive
    signature = loaded.signatures["serving_default"]
    x = rng.normal(size=(2, 5)).astype("float32")
    traced = kiln_worker.trace(signature, x, subgraph_builder_function=lambda n: True)
    out = traced(x)
    assert isinstance(out, dict) and len(out) == 1
    assert max_rel_diff(model(x), next(iter(out.values()))) < 1e-5
    traced_by_name = kiln_worker.trace(signature, {"features": x})
    assert max_rel_diff(model(x), next(iter(traced_by_name({"features": x}).values()))) < 1e-5


def test_python_branches_on_tensors_become_graph_branches() -> None:
    """Python ``if`` on a tensor (in a plain function, a custom layer of a functional model and
    a subclassed model) is converted by AutoGraph: traced on positive inputs, the traced model
    takes the other branch on negative ones."""
    import tensorflow as tf

    import kiln_worker

    class Branchy(tf.keras.layers.Layer):  # type: ignore[misc]
        def call(self, x: tf.Tensor) -> tf.Tensor:
            if tf.reduce_sum(x) > 0:
                return x * 2.0
            return x * 3.0

    class Subclassed(tf.keras.Model):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.dense = tf.keras.layers.Dense(3)

        def call(self, x: tf.Tensor) -> tf.Tensor:
            if tf.reduce_sum(x) > 0:
                return self.dense(x)
            return -self.dense(x)

    def plain(x: tf.Tensor) -> tf.Tensor:
        if tf.reduce_sum(x) > 0:
            return x * 2.0
        return x * 3.0

    inputs = tf.keras.Input((4,))
    functional = tf.keras.Model(inputs, tf.keras.layers.Dense(4)(Branchy()(inputs)))
    for func in (plain, functional, Subclassed()):
        traced = kiln_worker.trace(func, np.ones((2, 4), np.float32))
        negative = np.full((2, 4), -1.0, np.float32)
        assert max_rel_diff(func(negative), traced(negative)) < 1e-5, func


def test_batch_candidates_leave_scalars_and_side_inputs_out() -> None:
    from kiln_worker.tracer.batching import batch_candidates

    x, prototypes, scalar = np.zeros((2, 4)), np.zeros((5, 4)), np.asarray(np.float32(0.5))
    assert batch_candidates([scalar, x, prototypes]) == [
        (False, True, True), (False, True, False), (False, False, False)]
    assert batch_candidates([x, x]) == [(True, True), (False, False)]
    assert batch_candidates([scalar]) == [(False,)]


def test_weight_matrix_input_stays_whole_while_the_batch_varies(rng: np.random.Generator) -> None:
    """``func(a, b)`` with ``b`` a weight matrix: only ``a`` carries the batch, so the traced
    model takes any batch of ``a`` (relaxing and doubling ``b`` too cannot run)."""
    import tensorflow as tf

    import kiln_worker

    @tf.function
    def func(a, b):  # type: ignore[no-untyped-def]
        return tf.nn.relu(tf.matmul(a, b) + 1.0)

    a, b = rng.normal(size=(2, 3)).astype("float32"), rng.normal(size=(3, 4)).astype("float32")
    traced = kiln_worker.trace(func, (a, b))
    assert traced.report["batch_mode"] == "dynamic"
    more = rng.normal(size=(5, 3)).astype("float32")
    assert max_rel_diff(func(more, b), traced((more, b))) < 1e-5
