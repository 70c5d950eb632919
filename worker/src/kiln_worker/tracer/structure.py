"""The nesting of a call's inputs or outputs (``Structure``): flatten a value into its leaves in
``tf.nest`` order, rebuild it from them, and name each leaf by its path."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import tensorflow as tf

from kiln_worker.tracer.errors import TraceInputError
from kiln_worker.tracer.graphs import not_autograph

#: Errors here are the ``inputs`` pass's (the structure of the example inputs).
_PASS = "inputs"


@dataclass(frozen=True)
class Structure:
    """The nesting of a call's inputs or outputs.

    ``kind`` is the outer calling convention (``tensor``, ``list``, ``tuple`` or ``dict``);
    ``template`` is the whole nest with leaf positions as leaves (``None`` for a single tensor).
    """

    kind: str
    template: Any = None

    @property
    def paths(self) -> list[str]:
        """One name per leaf, in flattening order (``"1/0"``: first leaf of the second item)."""
        if self.kind == "tensor":
            return [""]
        found: dict[int, str] = {}
        _collect_paths(self.template, "", found)
        return [found.get(i, str(i)) for i in range(len(tf.nest.flatten(self.template)))]

    @not_autograph
    def flatten(self, value: Any) -> list[Any]:
        """Flatten ``value`` (of this structure) into a list of leaves.

        Raises:
            TraceInputError: ``value`` is nested differently.
        """
        if self.kind == "tensor":
            return [value]
        try:
            tf.nest.assert_same_structure(self.template, value, check_types=False)
        except (ValueError, TypeError) as e:
            raise TraceInputError(
                f"expected a {self.kind} nested like the example inputs "
                f"({tf.nest.map_structure(lambda _: '.', self.template)}): {e}",
                _PASS,
            ) from e
        return list(tf.nest.flatten(value))

    @not_autograph
    def pack(self, leaves: Sequence[Any]) -> Any:
        """Rebuild a value of this structure from its leaves."""
        if self.kind == "tensor":
            return leaves[0]
        return tf.nest.pack_sequence_as(self.template, list(leaves))


def _collect_paths(node: Any, prefix: str, found: dict[int, str]) -> None:
    """Map each leaf position of a template to its path (``a/1``)."""
    if isinstance(node, int) and not isinstance(node, bool):
        found[node] = prefix
        return
    if isinstance(node, dict):
        items: Any = node.items()
    elif isinstance(node, (list, tuple)):
        items = enumerate(node)
    else:
        return
    for key, child in items:
        _collect_paths(child, f"{prefix}/{key}" if prefix else str(key), found)


@not_autograph
def structure_of(value: Any) -> Structure:
    """The :class:`Structure` of a (possibly nested) value."""
    if isinstance(value, dict):
        kind = "dict"
    elif isinstance(value, (list, tuple)):
        kind = "tuple" if isinstance(value, tuple) else "list"
    else:
        return Structure("tensor")
    count = len(tf.nest.flatten(value))
    return Structure(kind, tf.nest.pack_sequence_as(value, list(range(count))))
