"""Build the op-allowlist zoo: SavedModels covering what users upload, in a subprocess of the tests.

Usage: python _build_op_zoo.py OUT_DIR [--full] [NAME ...]. Writes OUT_DIR/<name>/ (a SavedModel with a
``serving_default`` signature) for each model below; ``--full`` adds the slow ones (every
``tf.keras.applications`` family at a small input, ResNet50 and MobileNetV2 of the bench zoo).

The models: the bench zoo (``bench/zoo.py``: MLP, LSTM, GRU, BERT-like encoder, transformer block,
TextVectorization classifier, float16 and mixed-precision CNNs, NCHW CNN), the integration zoo
(``tests/integration/zoo_models.py``: StringLookup, TextVectorization, an asset-file table),
Keras preprocessing and recurrent layers, ``tf.lookup`` tables from tensors and from asset
files, and ``tf.function`` modules with control flow, strings, random numbers and TensorLists.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import tensorflow as tf
import tf_keras as keras

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "integration"))

import zoo  # noqa: E402  (bench/zoo.py)
import zoo_models  # noqa: E402  (tests/integration/zoo_models.py)

Writer = Callable[[Path], None]


def _keras(model: Any) -> Writer:
    return lambda path: model.save(str(path), save_format="tf")


def _seq(layers: list[Any], shape: tuple[int, ...], dtype: str = "float32") -> Writer:
    inputs = keras.Input(shape, dtype=dtype, name="x")
    x = inputs
    for layer in layers:
        x = layer(x)
    return _keras(keras.Model(inputs, x))


def _preprocessing() -> Writer:
    """IntegerLookup, Hashing, multi-hot and count StringLookup, CategoryEncoding, Normalization,
    Discretization and a bigram tf-idf TextVectorization, side by side."""
    words = keras.Input((3,), dtype="string", name="words")
    ints = keras.Input((3,), dtype="int64", name="ints")
    text = keras.Input((1,), dtype="string", name="text")
    nums = keras.Input((2,), name="nums")
    vectorize = keras.layers.TextVectorization(max_tokens=20, ngrams=2, output_mode="tf_idf")
    vectorize.adapt(["a b c", "b c d", "c d e"])
    normalize = keras.layers.Normalization()
    normalize.adapt([[1.0, 2.0], [3.0, 5.0]])
    parts = [
        keras.layers.IntegerLookup(vocabulary=[3, 5, 7], output_mode="multi_hot")(ints),
        keras.layers.Hashing(8, output_mode="one_hot")(words[:, :1]),
        keras.layers.StringLookup(vocabulary=["x", "y"], output_mode="count")(words),
        keras.layers.CategoryEncoding(10, output_mode="count")(ints),
        normalize(nums),
        keras.layers.CategoryEncoding(3, output_mode="multi_hot")(
            keras.layers.Discretization(bin_boundaries=[0.0, 1.0])(nums)),
        vectorize(text),
    ]
    joined = keras.layers.Concatenate()([keras.layers.Flatten()(p) for p in parts])
    return _keras(keras.Model([words, ints, text, nums], keras.layers.Dense(2)(joined)))


def _recurrent() -> Writer:
    """Masked embedding, bidirectional LSTM, GRU, SimpleRNN and a ConvLSTM2D branch."""
    ids = keras.Input((6,), dtype="int32", name="ids")
    frames = keras.Input((3, 8, 8, 2), name="frames")
    x = keras.layers.Embedding(50, 8, mask_zero=True)(ids)
    x = keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=True))(x)
    x = keras.layers.GRU(4, return_sequences=True, reset_after=False)(x)
    x = keras.layers.SimpleRNN(4)(x)
    y = keras.layers.GlobalAveragePooling2D()(keras.layers.ConvLSTM2D(2, 3)(frames))
    return _keras(keras.Model([ids, frames], keras.layers.Concatenate()([x, y])))


def _layers_mix() -> Writer:
    """Convolutions of every kind, pooling, normalisation, attention and reshaping layers."""
    x = keras.Input((16, 16, 3), name="x")
    h = keras.layers.SeparableConv2D(4, 3, padding="same", activation="swish")(x)
    h = keras.layers.DepthwiseConv2D(3, dilation_rate=2, padding="same")(h)
    h = keras.layers.Conv2DTranspose(4, 3, strides=2)(h)
    h = keras.layers.GroupNormalization(2)(keras.layers.UpSampling2D(interpolation="bilinear")(h))
    h = keras.layers.ZeroPadding2D()(keras.layers.MaxPooling2D()(keras.layers.PReLU()(h)))
    h = keras.layers.Cropping2D(1)(keras.layers.LeakyReLU()(keras.layers.ELU()(h)))
    h = keras.layers.Resizing(8, 8)(h)
    seq = keras.layers.Reshape((64, 4))(h)
    seq = keras.layers.Conv1D(4, 3, padding="causal")(seq)
    att = keras.layers.Attention()([seq, seq])
    add = keras.layers.AdditiveAttention()([seq, seq])
    seq = keras.layers.LayerNormalization()(keras.layers.Add()([seq, att, add]))
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalMaxPooling1D()(seq))
    return _keras(keras.Model(x, out))


class _Functions(tf.Module):  # type: ignore[misc]
    """Control flow, strings, random numbers, TensorLists, sparse and ragged tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.w = tf.Variable(tf.ones([4, 4]))
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(["a", "b"], tf.constant([1, 2], tf.int64)),
            default_value=tf.constant(-1, tf.int64))
        self.mutable = tf.lookup.experimental.MutableHashTable(tf.string, tf.int64, -1)
        self.dense_table = tf.lookup.experimental.DenseHashTable(
            tf.int64, tf.int64, default_value=0, empty_key=-1, deleted_key=-2)

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x"),
                                  tf.TensorSpec([None], tf.string, name="s")])
    def serve(self, x: tf.Tensor, s: tf.Tensor) -> dict[str, tf.Tensor]:
        def body(i: tf.Tensor, acc: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return i + 1, tf.tanh(tf.matmul(acc, self.w))

        _, y = tf.while_loop(lambda i, _: i < 3, body, [tf.constant(0), x])
        y = tf.cond(tf.reduce_sum(y) > 0, lambda: y * 2.0, lambda: y)
        y = tf.switch_case(tf.size(s) % 2, [lambda: y, lambda: -y])
        rows = tf.map_fn(lambda r: tf.reduce_max(r), y)
        array = tf.TensorArray(tf.float32, size=0, dynamic_size=True)
        for i in tf.range(2):
            array = array.write(i, tf.reduce_sum(y) * tf.cast(i, tf.float32))
        words = tf.strings.split(tf.strings.lower(s))
        ids = self.table.lookup(words.flat_values)
        ids += self.mutable.lookup(s)[:1] + self.dense_table.lookup(tf.constant([1], tf.int64))
        hashed = tf.strings.to_hash_bucket_fast(tf.strings.regex_replace(s, "[0-9]", "#"), 7)
        noise = tf.random.stateless_uniform(tf.shape(y), seed=[1, 2]) + tf.random.normal([1])
        sparse = tf.sparse.from_dense(tf.cast(y > 0, tf.int32))
        spectrum = tf.abs(tf.signal.rfft(y))
        top = tf.math.top_k(tf.reshape(y, [-1]), k=1).values
        return {"y": y + noise + tf.reduce_sum(spectrum) + top, "rows": rows,
                "array": array.stack(), "ids": tf.reduce_sum(ids) + tf.reduce_sum(hashed),
                "nnz": tf.size(sparse.values), "text": tf.strings.format("{}", tf.shape(x)),
                "einsum": tf.einsum("bi,ij->bj", x, self.w)}


def _functions() -> Writer:
    module = _Functions()
    return lambda path: tf.saved_model.save(module, str(path),
                                            signatures={"serving_default": module.serve})


def _integration(name: str, out: Path) -> Writer:
    folder = out / f"_{name}_files"
    folder.mkdir(parents=True, exist_ok=True)
    return zoo_models.BUILDERS[name](folder)[0]


def _applications() -> dict[str, Callable[[], Writer]]:
    apps = keras.applications
    small = {"EfficientNetB0": 32, "EfficientNetV2B0": 32, "DenseNet121": 32, "InceptionV3": 75,
             "Xception": 71, "NASNetMobile": 32, "ConvNeXtTiny": 32, "RegNetX002": 32, "VGG16": 32,
             "MobileNetV3Small": 32, "ResNet50V2": 32, "MobileNet": 32, "InceptionResNetV2": 75}

    def make(name: str, size: int) -> Callable[[], Writer]:
        return lambda: _keras(getattr(apps, name)(weights=None, input_shape=(size, size, 3),
                                                  classes=5))

    return {f"app_{n.lower()}": make(n, s) for n, s in small.items()}


def builders(out: Path, full: bool) -> dict[str, Callable[[], Writer]]:
    """Each model's name and a function giving its SavedModel writer."""
    # The suite's set: the integration zoo and four models that each gather a family of layers
    # or ops. ``--full`` adds the bench zoo and the Keras applications (a manual check: slow).
    chosen: dict[str, Callable[[], Writer]] = {
        f"integration_{name}": (lambda n=name: _integration(n, out)) for name in zoo_models.BUILDERS}
    chosen.update(preprocessing=_preprocessing, recurrent=_recurrent, layers_mix=_layers_mix,
                  functions=_functions)
    if full:
        chosen.update({f"bench_{name}": (lambda m=model: _keras(m.build()))
                       for name, model in zoo.BENCH_ZOO.items()})
        chosen.update(_applications())
    return chosen


def main(out: Path, full: bool, names: list[str]) -> None:
    for name, make in builders(out, full).items():
        if names and name not in names:
            continue
        keras.backend.clear_session()
        make()(out / name)
        print(f"built {name}", flush=True)


if __name__ == "__main__":
    args = sys.argv[2:]
    main(Path(sys.argv[1]), "--full" in args, [a for a in args if not a.startswith("--")])
