"""The table of compiler flags Kiln knows: one :class:`Spec` per flag, and the error naming them.

Every other piece (parsing, :class:`~kiln_client.flags.CompilerFlags`, the XLA gaps, the
``FlagsError`` message) reads this one table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal

__all__ = ["BY_NAME", "FIELD_FLAGS", "KNOWN_FLAGS", "OPTION_SPECS", "SPECS", "FlagsError", "OptionValue",
           "Spec"]

_Kind = Literal["bool", "int", "str", "choice", "multi", "verbose", "instance"]
OptionValue = str | int | bool


@dataclasses.dataclass(frozen=True)
class Spec:
    """How one flag is spelled, parsed, and whether the XLA backend can honour it."""

    name: str
    kind: _Kind
    usage: str
    choices: tuple[str, ...] = ()
    #: Why the XLA backend cannot honour the option; None when it can.
    xla_gap: str | None = None


_FP32_CAST = ("all", "matmult", "matmult-fp16", "matmult-bf16", "all-fp16")
_FAST_MATH = (
    "all", "none", "fast-relayout", "no-fast-relayout", "fp32-cast-all", "fp32-cast-all-fp16",
    "fp32-cast-matmult", "fp32-cast-matmult-bf16", "fp32-cast-matmult-fp16",
)  # fmt: skip
_VERBOSE = ("DEBUG", "INFO", "WARN", "WARNING", "ERROR", "CRITICAL", "FATAL")
# tensorflow-neuron's --extract-weights optionally names the instance the weights are laid out for.
_INSTANCES = (
    "inf1.xlarge", "inf1.2xlarge", "inf1.6xlarge", "inf1.24xlarge", "trn1.2xlarge",
    "trn1.32xlarge", "inf2.xlarge", "inf2.8xlarge", "inf2.24xlarge", "inf2.48xlarge",
)  # fmt: skip
_NO_NEFF = "XLA on CPU produces no NEFF archive; the option has no effect"
SPECS: tuple[Spec, ...] = (
    Spec("--workdir", "str", "--workdir DIR"),
    Spec("--dynamic-batch-size", "bool", "--dynamic-batch-size"),
    Spec("--extract-weights", "instance", "--extract-weights[=INSTANCE]", _INSTANCES),
    Spec(
        "--neuroncore-pipeline-cores", "int", "--neuroncore-pipeline-cores N",
        xla_gap="XLA on CPU has no NeuronCore pipeline; each subgraph is compiled for one CPU device",
    ),
    Spec("--verbose", "verbose", "--verbose {DEBUG,INFO,WARN,ERROR}", _VERBOSE),
    Spec(
        "--fp32-cast", "choice", "--fp32-cast {" + ",".join(_FP32_CAST) + "}", _FP32_CAST,
        xla_gap="XLA keeps float32 arithmetic; no automatic cast to bf16/fp16 is applied",
    ),
    Spec(
        "--fast-math", "multi", "--fast-math VALUE [VALUE ...]", _FAST_MATH,
        xla_gap="XLA keeps float32 arithmetic and exact transposes; fast-math casts are not applied",
    ),
    Spec(
        "--enable-saturate-infinity", "bool", "--enable-saturate-infinity",
        xla_gap="XLA keeps IEEE infinities; they are not saturated to the float range",
    ),
    Spec("--enable-fast-loading-neuron-binaries", "bool",
         "--enable-fast-loading-neuron-binaries", xla_gap=_NO_NEFF),
    Spec("--enable-fast-context-switch", "bool", "--enable-fast-context-switch",
         xla_gap="XLA on CPU loads all weights with the model; there is no context switch"),
    Spec("--static-weights", "bool", "--static-weights",
         xla_gap="XLA on CPU keeps weights in host memory; there is no on-chip weight cache"),
)
BY_NAME: dict[str, Spec] = {spec.name: spec for spec in SPECS}
# Flags that are fields of CompilerFlags; every other flag lives in compiler_options.
FIELD_FLAGS = {
    "--workdir": "workdir",
    "--dynamic-batch-size": "dynamic_batch_size",
    "--extract-weights": "extract_weights",
    "--neuroncore-pipeline-cores": "neuroncore_pipeline_cores",
}
OPTION_SPECS = {spec.name[2:]: spec for spec in SPECS if spec.name not in FIELD_FLAGS}

#: Every flag Kiln accepts in ``NEURON_CC_FLAGS``, mapped to its usage line.
KNOWN_FLAGS: Mapping[str, str] = MappingProxyType({spec.name: spec.usage for spec in SPECS})


class FlagsError(ValueError):
    """A flag in ``NEURON_CC_FLAGS`` is unknown, malformed, or not allowed with another.

    The message names the offending flag and lists every known flag, so that it can be shown to
    a person as is (the service answers it with 422).

    Attributes:
        flag: The offending flag (``"--fast-math"``), or None when no single flag is to blame.
        reason: The message without the list of known flags.
    """

    def __init__(self, reason: str, flag: str | None = None) -> None:
        self.reason = reason
        self.flag = flag
        known = "; ".join(KNOWN_FLAGS.values())
        super().__init__(f"{reason}. Known flags: {known}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the exception picklable across Celery/process boundaries.
        return (type(self), (self.reason, self.flag))
