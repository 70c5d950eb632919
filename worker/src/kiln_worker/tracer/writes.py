"""Variables the traced function writes: refused in the ``freeze`` pass with the reason.

A traced model is for inference. Freezing turns every variable into a constant, so a function
that also assigns to a variable (a call counter's ``assign_add``, a stateful RNN's states, a
``tf.random.Generator``'s state, an optimizer step) would lose the write, and TensorFlow's freezer
fails on it with a message about resource inputs. The write ops are found before freezing, in the
graph and the functions it calls, and named with the variables they write.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kiln_worker.tracer.errors import UnsupportedModelError

__all__ = ["check_no_variable_writes", "is_variable_write", "variable_writes"]

_PASS = "freeze"
#: Ops that change a resource variable (exact names)
_WRITE_OPS = frozenset(
    {
        "AssignVariableOp",
        "AssignAddVariableOp",
        "AssignSubVariableOp",
        "ResourceStridedSliceAssign",
        "ResourceCountUpTo",
        "RngReadAndSkip",  # tf.random.Generator: advances its state variable
        "RngSkip",
    }
)
#: ... and by prefix: scatter updates, optimizer steps, a Generator's stateful draws
_WRITE_PREFIXES = ("ResourceScatter", "ResourceApply", "ResourceSparseApply", "StatefulUniform",
                   "StatefulStandardNormal", "StatefulTruncatedNormal", "StatefulRandomBinomial")


def is_variable_write(op: str) -> bool:
    """Whether op type ``op`` changes the resource variable it takes."""
    return op in _WRITE_OPS or op.startswith(_WRITE_PREFIXES)


def variable_writes(concrete: Any) -> list[str]:
    """``"<variable> (<op> at <node>)"`` for each write in ``concrete`` and the functions it calls.

    The variable is named when its handle can be followed from a captured variable through
    function calls; otherwise the resource input is given.
    """
    graph_def = concrete.graph.as_graph_def()
    functions = {f.signature.name: f for f in graph_def.library.function}
    captured = {internal.op.name: external for external, internal in concrete.graph.captures}
    names = {}
    for variable in concrete.graph.variables:
        for placeholder, handle in captured.items():
            if handle is variable.handle:
                names[placeholder] = variable.name
    found: list[str] = []
    _scan(graph_def.node, names, functions, found, depth=0)
    return found


def _scan(nodes: Any, names: Mapping[str, str], functions: Mapping[str, Any], found: list[str],
          depth: int) -> None:
    """Add the writes among ``nodes`` (``names``: resource input → variable) to ``found``, and
    those of the functions they call, up to a depth that stops recursive functions."""
    for node in nodes:
        if is_variable_write(node.op):
            source = node.input[0].split(":")[0] if node.input else "?"
            found.append(f"{names.get(source, source)} ({node.op} at {node.name})")
        if depth > 8:
            continue
        inputs = [i.split(":")[0] for i in node.input if not i.startswith("^")]
        for attr in node.attr.values():
            called = [attr.func.name] if attr.func.name else [f.name for f in attr.list.func]
            for fdef in (functions[name] for name in called if name in functions):
                args = [a.name for a in fdef.signature.input_arg]
                # a branch op's first input picks the branch: the arguments are the last ones
                passed = inputs[max(len(inputs) - len(args), 0):]
                inner = {a: names[i] for a, i in zip(args, passed, strict=False) if i in names}
                _scan(fdef.node_def, inner, functions, found, depth + 1)


def check_no_variable_writes(concrete: Any) -> None:
    """Refuse a function that writes to variables, naming them.

    Raises:
        UnsupportedModelError: the function assigns to a variable (or advances a random
            generator's state) while it runs.
    """
    writes = list(dict.fromkeys(variable_writes(concrete)))
    if writes:
        raise UnsupportedModelError(
            f"the function writes to variables while it runs: {', '.join(writes[:5])}. A traced "
            "model is for inference and its weights are frozen, so such an update would be lost: "
            "trace a function that only reads its variables (move counters, stateful RNN states "
            "and optimizer steps out of it; draw random numbers with tf.random.uniform or the "
            "tf.random.stateless_* ops instead of a tf.random.Generator)",
            _PASS,
        )
