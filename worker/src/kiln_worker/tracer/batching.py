"""Which example inputs carry the batch, and the example inputs at a larger batch.

A traced function takes its inputs with axis 0 relaxed to ``None`` where that axis is the batch.
Not every input has one: a scalar (a softmax temperature, a threshold) has no axis, and a side
input of a fixed shape (a weight matrix, a table of class prototypes) is the same at every batch.
``batched`` (one bool per flat input) says which inputs do; every pass that runs the model at
another batch size repeats those inputs only (:func:`repeat_batch`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

__all__ = ["batch_candidates", "batch_rows", "repeat_batch", "runs_at_double"]

logger = logging.getLogger(__name__)


def batch_candidates(examples: list[np.ndarray]) -> list[tuple[bool, ...]]:
    """Which inputs to try tracing with a relaxed axis 0, most first; the last has none.

    First every input with an axis; then only those whose axis 0 has the first one's size (a
    signature may take a side input of a fixed shape next to the batch). Scalars are never
    batched.
    """
    rows = next((x.shape[0] for x in examples if x.ndim), None)
    ranked = tuple(x.ndim > 0 for x in examples)
    same = tuple(x.ndim > 0 and x.shape[0] == rows for x in examples)
    tried = [c for c in dict.fromkeys([ranked, same]) if any(c)]
    return [*tried, tuple(False for _ in examples)]


def repeat_batch(
    examples: Sequence[np.ndarray], batched: Sequence[bool], times: int
) -> list[np.ndarray]:
    """The batched inputs with each row repeated ``times`` along axis 0; the others as they are.

    Each row is repeated in place (``a a b b``, not ``a b a b``) so that the batch keeps any order
    its rows have: sorted segment ids stay sorted, a ``segment_sum`` over them stays valid.
    """
    return [
        np.repeat(x, times, axis=0) if b else x for x, b in zip(examples, batched, strict=True)
    ]


def batch_rows(examples: Sequence[np.ndarray], batched: Sequence[bool]) -> int | None:
    """The batch size: axis 0 of the first batched input (``None`` when none is batched)."""
    return next((int(x.shape[0]) for x, b in zip(examples, batched, strict=True) if b), None)


def runs_at_double(concrete: Any, examples: list[np.ndarray], batched: tuple[bool, ...]) -> bool:
    """Whether ``concrete`` runs with its ``batched`` inputs at twice their rows."""
    try:
        concrete(*[tf.constant(x) for x in repeat_batch(examples, batched, 2)])
    except Exception as e:  # any failure: those inputs are not all batched
        logger.debug("batched=%s does not run at twice the batch: %s", batched, e)
        return False
    return True
