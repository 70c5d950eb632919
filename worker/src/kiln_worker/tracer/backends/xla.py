"""The ``xla`` backend: subgraphs become ``tf.function(jit_compile=True)`` functions."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

import tensorflow as tf
from tensorflow.python.framework import kernels, op_def_registry

from kiln_worker.tracer.backends.base import CompiledSubgraph

logger = logging.getLogger(__name__)
_DEVICE = "XLA_CPU_JIT"
#: Functional ops XLA compiles when their bodies compile (the op itself is marked stateful).
FUNCTIONAL_OPS = frozenset(
    {
        "While",
        "StatelessWhile",
        "If",
        "StatelessIf",
        "Case",
        "StatelessCase",
        "PartitionedCall",
        "StatefulPartitionedCall",
    }
)


@functools.cache
def _ensure_xla_devices() -> None:
    """XLA registers its JIT kernels lazily: one tiny compile (once per process) makes them
    queryable."""
    tf.function(lambda x: x + 1.0, jit_compile=True, autograph=False)(tf.constant(1.0))


class XlaBackend:
    """Compile subgraphs with XLA on this host's CPU."""

    name = "xla"

    def __init__(self) -> None:
        _ensure_xla_devices()
        self._kernel_cache: dict[str, list[Any]] = {}

    def _kernels(self, op: str) -> list[Any]:
        if op not in self._kernel_cache:
            registered = kernels.get_registered_kernels_for_op(op).kernel
            self._kernel_cache[op] = [k for k in registered if k.device_type == _DEVICE]
        return self._kernel_cache[op]

    def _dtypes_fit(self, node: Any, kernel: Any) -> bool:
        for constraint in kernel.constraint:
            allowed = set(constraint.allowed_values.list.type)
            value = node.attr.get(constraint.name)
            if value is None or not allowed:
                continue
            used = [value.type] if value.HasField("type") else list(value.list.type)
            if any(t not in allowed for t in used):
                return False
        return True

    def is_node_supported(
        self, node: Any, library: Any, _seen: frozenset[str] = frozenset()
    ) -> str | None:
        """Return ``None`` when XLA can compile ``node`` (body functions included), else why not."""
        op_def = op_def_registry.get(node.op)
        if op_def is None:
            return f"unknown op type {node.op}"
        if node.op in FUNCTIONAL_OPS:
            return self._bodies_supported(node, library, _seen)
        if op_def.is_stateful:
            return "stateful op (its effects must keep their order on CPU)"
        found = self._kernels(node.op)
        if not found:
            return f"unsupported op type: XLA has no kernel for {node.op}"
        if not any(self._dtypes_fit(node, k) for k in found):
            return f"unsupported dtype for {node.op} under XLA"
        return None

    def _bodies_supported(self, node: Any, library: Any, seen: frozenset[str]) -> str | None:
        functions = {f.signature.name: f for f in library.function}
        for value in node.attr.values():
            names = (
                [value.func.name] if value.HasField("func") else [f.name for f in value.list.func]
            )
            for name in names:
                if name in seen or name not in functions:
                    continue
                for inner in functions[name].node_def:
                    reason = self.is_node_supported(inner, library, seen | {name})
                    if reason is not None:
                        return f"body {name}: {inner.op}: {reason}"
        return None

    def compile_subgraph(
        self, name: str, body: Callable[..., Any], specs: list[Any], example_args: list[Any]
    ) -> CompiledSubgraph:
        """Trace ``body`` with ``jit_compile=True``, compile it now by running it once.

        Raises:
            Exception: whatever XLA raises when it rejects the subgraph.
        """
        function = tf.function(body, jit_compile=True, autograph=False)
        concrete = function.get_concrete_function(*specs)
        start = time.perf_counter()
        concrete(*example_args)
        seconds = time.perf_counter() - start
        library = concrete.graph.as_graph_def().library
        defs = [concrete.function_def, *library.function]
        log = f"{name}: compiled by XLA ({_DEVICE}) in {seconds:.3f}s"
        return CompiledSubgraph(concrete, defs, seconds, log, None)

    def hlo_text(self, body: Callable[..., Any], example_args: list[Any]) -> str:
        """The HLO of ``body`` on ``example_args`` (for ``--workdir``)."""
        function = tf.function(body, jit_compile=True, autograph=False)
        return str(function.experimental_get_compiler_ir(*example_args)(stage="hlo"))
