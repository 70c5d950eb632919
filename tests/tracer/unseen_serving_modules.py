"""Serving signatures as TF Serving users export them, for ``test_unseen_serving.py``: encoded
images, serialized ``tf.train.Example`` protos and base64 text in, string work, data-dependent
loops and scalar parameters next to the batch. Each is a ``tf.Module`` whose ``__call__`` is a
``tf.function`` with an input signature (what ``tf.saved_model.save`` makes ``serving_default``),
with its example inputs as ``inputs(batch, seed)`` functions."""

from __future__ import annotations

import base64
import os
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from tests.tracer.unseen_modules import normal, weights

STRING, F32, I32, I64 = tf.string, tf.float32, tf.int32, tf.int64


def spec(shape: list[int | None], dtype: tf.DType, name: str) -> tf.TensorSpec:
    return tf.TensorSpec(shape, dtype, name=name)


def _pixels(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth uint8 image (JPEG keeps it close; the test compares decodes of the same bytes)."""
    rows, cols = np.mgrid[0:height, 0:width]
    phase = np.random.default_rng(seed).uniform(0, 6, size=3)
    waves = [np.sin(rows / 3.0 + p) + np.cos(cols / 4.0 - p) for p in phase]
    return (np.stack(waves, -1) * 60 + 128).clip(0, 255).astype("uint8")


class EncodedImages(tf.Module):  # type: ignore[misc]
    """JPEG or PNG bytes in (one per row, any size), decoded, resized, a small conv net out."""

    def __init__(self) -> None:
        super().__init__()
        self.kernel = weights(3, 3, 3, 6)
        self.dense = weights(6, 4, seed=2)

    def _decode(self, data: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        image = tf.image.convert_image_dtype(image, tf.float32)
        return tf.image.resize(image, [12, 12])

    @tf.function(input_signature=[spec([None], STRING, "image_bytes")])  # type: ignore[misc]
    def __call__(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        images = tf.map_fn(self._decode, image_bytes, fn_output_signature=tf.float32)
        x = tf.nn.relu(tf.nn.conv2d(images, self.kernel, 1, "SAME"))
        logits = tf.reduce_mean(x, axis=[1, 2]) @ self.dense
        return {"probabilities": tf.nn.softmax(logits), "mean_pixel": tf.reduce_mean(images, [1, 2])}


def encoded_images(batch: int, seed: int) -> np.ndarray:
    """Alternating JPEG and PNG bytes of images of different sizes."""
    out = []
    for i in range(batch):
        pixels = _pixels(14 + 3 * i, 18 - 2 * i, seed * 10 + i)
        encode = tf.io.encode_jpeg if i % 2 == 0 else tf.io.encode_png
        out.append(encode(pixels).numpy())
    return np.array(out, dtype=object)


class JpegOnly(EncodedImages):
    """The TF Serving image classifier of the tutorials: decode_jpeg in a map_fn."""

    def _decode(self, data: tf.Tensor) -> tf.Tensor:
        image = tf.cast(tf.io.decode_jpeg(data, channels=3), tf.float32) / 255.0
        return tf.image.resize(image, [12, 12], method="bilinear")


def jpeg_images(batch: int, seed: int) -> np.ndarray:
    pixels = [_pixels(16, 16, seed * 10 + i) for i in range(batch)]
    return np.array([tf.io.encode_jpeg(p, quality=90).numpy() for p in pixels], dtype=object)


# --- tf.train.Example in -----------------------------------------------------------------------

COUNTRIES = ["de", "fr", "jp", "us"]
CLASSES = ["cat", "dog", "fish"]
_FEATURES = {
    "age": tf.io.FixedLenFeature([1], tf.float32),
    "clicks": tf.io.FixedLenFeature([1], tf.int64, default_value=[0]),
    "country": tf.io.FixedLenFeature([], tf.string, default_value="??"),
    "tags": tf.io.VarLenFeature(tf.int64),
}


class ParsedExamples(tf.Module):  # type: ignore[misc]
    """Serialized tf.Example protos in: parse_example (a sparse feature inside), a string lookup,
    bucketized age, a mean embedding of the sparse tags, dense layers, probabilities and the
    class name of each row (a string output)."""

    def __init__(self) -> None:
        super().__init__()
        self.country = tf.keras.layers.StringLookup(vocabulary=COUNTRIES, num_oov_indices=1)
        keys = tf.constant(list(range(len(CLASSES))), tf.int64)
        self.classes = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(keys, tf.constant(CLASSES)), "unknown")
        self.tag_embedding = weights(10, 4, seed=3)
        self.country_embedding = weights(len(COUNTRIES) + 1, 3, seed=4)
        self.hidden = weights(4 + 3 + 5 + 1, 8, seed=5)
        self.out = weights(8, len(CLASSES), seed=6)

    @tf.function(input_signature=[spec([None], STRING, "examples")])  # type: ignore[misc]
    def __call__(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        parsed = tf.io.parse_example(examples, _FEATURES)
        age = tf.raw_ops.Bucketize(input=parsed["age"][:, 0], boundaries=[18.0, 30.0, 45.0, 60.0])
        country = tf.gather(self.country_embedding, self.country(parsed["country"]))
        tags = tf.nn.safe_embedding_lookup_sparse(self.tag_embedding, parsed["tags"],
                                                  combiner="mean")
        clicks = tf.math.log1p(tf.cast(parsed["clicks"], tf.float32))
        x = tf.concat([tags, country, tf.one_hot(age, 5), clicks], axis=1)
        logits = tf.nn.relu(x @ self.hidden) @ self.out
        best = tf.argmax(logits, axis=1)
        return {"probabilities": tf.nn.softmax(logits), "classes": self.classes.lookup(best),
                "tag_count": tf.sparse.reduce_sum(tf.sparse.map_values(tf.ones_like,
                                                                       parsed["tags"]), 1)}


def serialized_examples(batch: int, seed: int) -> np.ndarray:
    """Examples with every feature, one with no tags, one with no country (its default)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(batch):
        feature = {
            "age": tf.train.Feature(float_list=tf.train.FloatList(value=[rng.uniform(10, 70)])),
            "clicks": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(rng.integers(
                0, 50))])),
            "tags": tf.train.Feature(int64_list=tf.train.Int64List(
                value=rng.integers(0, 10, size=(i + seed) % 4).tolist())),
        }
        if i != 1:
            country = [*COUNTRIES, "br"][int(rng.integers(0, 5))]
            feature["country"] = tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[country.encode()]))
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        out.append(example.SerializeToString())
    return np.array(out, dtype=object)


# --- base64 and string work --------------------------------------------------------------------


class Base64Text(tf.Module):  # type: ignore[misc]
    """Web-safe base64 text in: decoded, lowered, cleaned with a regex, split into words (ragged),
    numbers parsed from them, then padded to a dense block for a dense layer."""

    def __init__(self) -> None:
        super().__init__()
        self.w = weights(4 + 2, 3)

    @tf.function(input_signature=[spec([None], STRING, "b64")])  # type: ignore[misc]
    def __call__(self, b64: tf.Tensor) -> dict[str, tf.Tensor]:
        text = tf.strings.lower(tf.io.decode_base64(b64))
        cleaned = tf.strings.regex_replace(text, r"[^0-9a-z. -]+", " ")
        words = tf.strings.split(cleaned)  # ragged: rows of words
        numeric = tf.strings.regex_full_match(words, r"-?[0-9]+(\.[0-9]+)?")
        numbers = tf.ragged.boolean_mask(words, numeric)
        values = tf.strings.to_number(numbers, tf.float32)
        padded = values[:, :4].to_tensor(default_value=0.0, shape=[None, 4])
        counts = tf.cast(tf.stack([words.row_lengths(), numbers.row_lengths()], 1), tf.float32)
        x = tf.concat([padded, counts], 1)
        return {"scores": tf.tanh(x @ self.w), "first_word": words[:, :1].to_tensor("")[:, 0],
                "cleaned": cleaned}


_TEXTS = ["Price: 12.5, QTY 3 -- OK!", "no numbers HERE", "A 1 b 2 c 3 d 4 e 5",
          "Temp=-4.25; wind 17", "x"]


def base64_text(batch: int, seed: int) -> np.ndarray:
    texts = [_TEXTS[(seed + i) % len(_TEXTS)] for i in range(batch)]
    return np.array([base64.urlsafe_b64encode(t.encode()) for t in texts], dtype=object)


# --- control flow with data-dependent trip counts -----------------------------------------------


class DataDependentLoops(tf.Module):  # type: ignore[misc]
    """Loops whose trip count depends on the values: Newton's square root until it converges, a
    loop to the longest length, a while loop nested in a cond, and a switch_case on an integer."""

    def __init__(self) -> None:
        super().__init__()
        self.w = weights(4, 4)

    @tf.function(input_signature=[spec([None, 4], F32, "x"), spec([None], I32, "lengths"),
                                  spec([], I32, "branch")])  # type: ignore[misc]
    def __call__(self, x: tf.Tensor, lengths: tf.Tensor, branch: tf.Tensor) -> dict[str, tf.Tensor]:
        a = tf.abs(x) + 1.0
        root = a
        steps = tf.constant(0)
        while tf.reduce_max(tf.abs(root * root - a)) > 1e-5 and steps < 50:
            root = 0.5 * (root + a / root)
            steps += 1
        mask = tf.sequence_mask(lengths, 4, tf.float32)
        total = tf.zeros_like(x[:, 0])
        for t in tf.range(tf.reduce_max(lengths)):
            total += x[:, t] * mask[:, t]
        nested = tf.cond(tf.reduce_sum(x) > 0.0, lambda: self._halve(x), lambda: x @ self.w)
        switched = tf.switch_case(branch, [lambda: tf.nn.relu(x), lambda: tf.tanh(x @ self.w),
                                           lambda: -x])
        return {"root": root, "steps": steps, "total": total, "nested": nested,
                "switched": switched}

    def _halve(self, x: tf.Tensor) -> tf.Tensor:
        return tf.while_loop(lambda y: tf.reduce_max(tf.abs(y)) > 0.1, lambda y: y * 0.5, [x])[0]


def loop_inputs(batch: int, seed: int) -> dict[str, np.ndarray]:
    lengths = (np.arange(batch) + seed) % 4 + 1
    x = normal(batch, 4, seed=seed) * (3.0 if seed else 1.0)
    return {"x": x, "lengths": lengths.astype("int32"), "branch": np.int32(1 + seed)}


# --- a scalar parameter next to the batch -------------------------------------------------------


class TopK(tf.Module):  # type: ignore[misc]
    """Scores with a softmax temperature, and the top ``k`` (a scalar input: the output's second
    axis is as long as the caller asks)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = weights(6, 8)

    @tf.function(input_signature=[spec([None, 6], F32, "x"), spec([], I32, "top_k"),
                                  spec([], F32, "temperature")])  # type: ignore[misc]
    def __call__(self, x: tf.Tensor, top_k: tf.Tensor, temperature: tf.Tensor
                 ) -> dict[str, tf.Tensor]:
        probs = tf.nn.softmax(x @ self.w / temperature)
        values, indices = tf.math.top_k(probs, k=top_k)
        return {"values": values, "indices": indices, "probs": probs}


def top_k_inputs(batch: int, seed: int) -> dict[str, np.ndarray]:
    return {"x": normal(batch, 6, seed=seed), "top_k": np.int32(3 - seed),
            "temperature": np.float32(0.5 + seed)}


# --- a Keras model exported with a custom serving function ---------------------------------------


class BytesServing(tf.Module):  # type: ignore[misc]
    """A Keras classifier and the serving function users export with it: JPEG bytes and a string
    key in, decoded and batched, the model called, the key and class names passed out (as an
    Estimator's classify signature does: the names tiled per row)."""

    def __init__(self) -> None:
        super().__init__()
        tf.keras.utils.set_random_seed(0)
        layers = tf.keras.layers
        self.model = tf.keras.Sequential([
            tf.keras.Input((16, 16, 3)), layers.Rescaling(1 / 127.5, offset=-1),
            layers.Conv2D(6, 3, activation="relu"), layers.GlobalAveragePooling2D(),
            layers.Dense(len(CLASSES), activation="softmax")])

    @tf.function(input_signature=[spec([None], STRING, "image_bytes"),
                                  spec([None], STRING, "key")])  # type: ignore[misc]
    def __call__(self, image_bytes: tf.Tensor, key: tf.Tensor) -> dict[str, tf.Tensor]:
        images = tf.map_fn(lambda b: tf.image.resize(tf.io.decode_jpeg(b, 3), [16, 16]),
                           image_bytes, fn_output_signature=tf.float32)
        scores = self.model(images, training=False)
        names = tf.tile(tf.constant([CLASSES]), [tf.shape(scores)[0], 1])
        return {"scores": scores, "classes": names, "key": key}


def save_with_serving_function(module: Any, directory: os.PathLike[str]) -> object:
    """``model.save(path, signatures=...)``: the Keras model, the module's call as its serving
    signature."""
    module.model.save(str(directory), save_format="tf",
                      signatures={"serving_default": module.__call__.get_concrete_function()})
    return directory


def bytes_and_keys(batch: int, seed: int) -> dict[str, np.ndarray]:
    keys = np.array([f"req-{seed}-{i}".encode() for i in range(batch)], dtype=object)
    return {"image_bytes": jpeg_images(batch, seed), "key": keys}


# --- feature columns in a Keras model -----------------------------------------------------------


class FeatureColumnServing(tf.Module):  # type: ignore[misc]
    """A Keras model over ``DenseFeatures`` (feature columns: a vocabulary list, a hashed column,
    a bucketized numeric one, embeddings), served from serialized tf.Example protos."""

    def __init__(self) -> None:
        super().__init__()
        tf.keras.utils.set_random_seed(0)
        fc = tf.feature_column
        country = fc.categorical_column_with_vocabulary_list("country", COUNTRIES,
                                                             num_oov_buckets=1)
        tags = fc.categorical_column_with_identity("tags", 10)
        age = fc.numeric_column("age")
        columns = [fc.embedding_column(country, 3), fc.embedding_column(tags, 4, combiner="mean"),
                   fc.bucketized_column(age, [18.0, 30.0, 45.0, 60.0]), age,
                   fc.indicator_column(fc.categorical_column_with_hash_bucket("country", 7))]
        self.spec = fc.make_parse_example_spec(columns)
        layers = tf.keras.layers
        self.model = tf.keras.Sequential([layers.DenseFeatures(columns),
                                          layers.Dense(8, activation="relu"),
                                          layers.Dense(len(CLASSES), activation="softmax")])
        self.model(tf.io.parse_example(serialized_examples(2, 0), self.spec))

    @tf.function(input_signature=[spec([None], STRING, "examples")])  # type: ignore[misc]
    def __call__(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        scores = self.model(tf.io.parse_example(examples, self.spec), training=False)
        return {"scores": scores, "best": tf.gather(tf.constant(CLASSES), tf.argmax(scores, 1))}


def named_examples(batch: int, seed: int) -> dict[str, np.ndarray]:
    return {"examples": serialized_examples(batch, seed)}
