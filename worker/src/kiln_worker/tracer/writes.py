"""Variables the traced function writes: refused in the ``freeze`` pass with the reason.

A traced model is for inference. Freezing turns every variable into a constant, so a function
that also assigns to a variable (a call counter's ``assign_add``, a stateful RNN's states, a
``tf.random.Generator``'s state, an optimizer step) would lose the write, and TensorFlow's freezer
fails on it with a message about resource inputs. The write ops are found before freezing, in the
graph and the functions it calls, and named with the variables they write.

Keras 3 random layers draw from a ``SeedGenerator`` whose state variable they advance at each
call. They are inactive in a model traced in memory (``trace`` passes ``training=False``), but
``model.export()`` serves ``model(x)``, where the augmentation layers (``RandomFlip`` ...) default
to ``training=True``: such a signature is refused naming the layers and how to export without them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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


#: the name of a Keras 3 ``SeedGenerator``'s state variable
_KERAS_SEED_STATE = "seed_generator_state"


@dataclass(frozen=True)
class _Write:
    """One op writing a variable: the variable (or its resource input), the op, its node."""

    variable: str
    op: str
    node: str

    def __str__(self) -> str:
        return f"{self.variable} ({self.op} at {self.node})"


def is_variable_write(op: str) -> bool:
    """Whether op type ``op`` changes the resource variable it takes."""
    return op in _WRITE_OPS or op.startswith(_WRITE_PREFIXES)


def variable_writes(concrete: Any) -> list[str]:
    """``"<variable> (<op> at <node>)"`` for each write in ``concrete`` and the functions it calls.

    The variable is named when its handle can be followed from a captured variable through
    function calls; otherwise the resource input is given.
    """
    return [str(write) for write in _writes(concrete)]


def _writes(concrete: Any) -> list[_Write]:
    graph_def = concrete.graph.as_graph_def()
    functions = {f.signature.name: f for f in graph_def.library.function}
    captured = {internal.op.name: external for external, internal in concrete.graph.captures}
    names = {}
    for variable in concrete.graph.variables:
        for placeholder, handle in captured.items():
            if handle is variable.handle:
                names[placeholder] = variable.name
    found: list[_Write] = []
    _scan(graph_def.node, names, functions, found, depth=0)
    return list(dict.fromkeys(found))


def _scan(nodes: Any, names: Mapping[str, str], functions: Mapping[str, Any],
          found: list[_Write], depth: int) -> None:
    """Add the writes among ``nodes`` (``names``: resource input → variable) to ``found``, and
    those of the functions they call, up to a depth that stops recursive functions."""
    for node in nodes:
        if is_variable_write(node.op):
            source = node.input[0].split(":")[0] if node.input else "?"
            found.append(_Write(names.get(source, source), node.op, node.name))
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
    writes = _writes(concrete)
    if not writes:
        return
    seeded = [w.node.rsplit("/", 1)[0] for w in writes if _KERAS_SEED_STATE in w.variable]
    if seeded:
        raise UnsupportedModelError(_keras_random_message(list(dict.fromkeys(seeded))), _PASS)
    raise UnsupportedModelError(
        f"the function writes to variables while it runs: {', '.join(map(str, writes[:5]))}. "
        "A traced model is for inference and its weights are frozen, so such an update would be "
        "lost: trace a function that only reads its variables (move counters, stateful RNN "
        "states and optimizer steps out of it; draw random numbers with tf.random.uniform or the "
        "tf.random.stateless_* ops instead of a tf.random.Generator)",
        _PASS,
    )


def _keras_random_message(layers: list[str]) -> str:
    """Why a function whose Keras 3 layers draw random numbers is refused, and what to do."""
    return (
        f"Keras 3 layers draw random numbers in this function: {', '.join(layers[:5])} (each "
        "advances its SeedGenerator's seed_generator_state variable at every call; a traced "
        "model's variables are frozen, so it would repeat one draw forever). Layers that draw "
        "only in training (RandomFlip and the other augmentation layers, Dropout, GaussianNoise) "
        "are inactive with training=False, which trace passes to a Keras model; Keras 3's "
        "model.export() does not: it serves model(x), where the augmentation layers default to "
        "training=True, so the exported model augments its inputs at inference. Export an "
        "inference endpoint instead: archive = keras.export.ExportArchive(); "
        "archive.track(model); archive.add_endpoint('serve', lambda x: model(x, "
        "training=False), input_signature=[keras.InputSpec(shape=..., dtype=...)]); "
        "archive.write_out(path). A layer meant to draw at inference must use "
        "tf.random.uniform or tf.random.normal, which a traced model keeps drawing"
    )
