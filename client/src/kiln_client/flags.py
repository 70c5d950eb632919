"""Compiler flags: ``NEURON_CC_FLAGS`` parsed like a command line into :class:`CompilerFlags`.

tensorflow-neuron reads its options from the ``NEURON_CC_FLAGS`` environment variable. Kiln
parses that string once, up front, into one frozen model that then travels as an argument (the
service parses it too, to reject bad flags with 422 before queueing). Pure Python: no TensorFlow.

Accepted syntax is that of a shell command line split with :func:`shlex.split`: ``--a=b`` and
``--a b`` for options with a value, bare ``--a`` for booleans. The known flags are those of the
tracing API (``--workdir``, ``--dynamic-batch-size``, ``--extract-weights``) and the public
options of the Inf1 compiler ``neuron-cc`` (see its "CLI Reference Guide").

Errors::

    ValueError
     └── FlagsError   (names the bad flag and lists the known ones)
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kiln_client._flag_table import (
    BY_NAME,
    FIELD_FLAGS,
    KNOWN_FLAGS,
    OPTION_SPECS,
    FlagsError,
    OptionValue,
)
from kiln_client._flag_values import (
    check_combinations,
    check_option,
    lookup,
    read_value,
    split_flags,
)

# The flag table and FlagsError live in _flag_table, the value readers in _flag_values; this
# module is where callers import them from.
__all__ = [
    "KNOWN_FLAGS",
    "CompilerFlags",
    "FlagsError",
    "flags_from_env",
    "parse_flags",
    "xla_unsupported_options",
]


class CompilerFlags(BaseModel):
    """Options for one trace, as given in ``NEURON_CC_FLAGS`` (all default to "not given").

    ``CompilerFlags()`` is what an empty ``NEURON_CC_FLAGS`` means. Build one with
    :func:`parse_flags`; constructing it directly validates the same rules.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    workdir: str | None = None
    """``--workdir DIR``: where the tracer writes its debug artifacts; None writes none."""
    dynamic_batch_size: bool = False
    """``--dynamic-batch-size``: the model must accept any size along axis 0."""
    extract_weights: bool = False
    """``--extract-weights``: keep weights out of the graph protobuf (models over 2 GB)."""
    extract_weights_instance: str | None = None
    """``--extract-weights=INSTANCE`` (tensorflow-neuron's form); None means inf1.2xlarge."""
    neuroncore_pipeline_cores: int | None = Field(default=None, ge=1)
    """``--neuroncore-pipeline-cores N``: NeuronCores to pipeline each subgraph over (>= 1)."""
    compiler_options: dict[str, OptionValue] = Field(default_factory=dict)
    """Other neuron-cc options, keyed by flag name without dashes (``{"fp32-cast": "matmult"}``);
    booleans are ``True`` when given, ``--fast-math`` values are joined by spaces."""

    @model_validator(mode="after")
    def _check(self) -> CompilerFlags:
        for key, value in self.compiler_options.items():
            check_option(key, value)
        if self.extract_weights_instance is not None and not self.extract_weights:
            raise FlagsError("extract_weights_instance is set without --extract-weights",
                             "--extract-weights")
        check_combinations(self.extract_weights, self.dynamic_batch_size,
                           self.neuroncore_pipeline_cores)
        return self

    def to_args(self) -> list[str]:
        """The flags as an argument list, in a canonical order; `parse_flags` reverses it.

        Returns:
            Tokens such as ``["--workdir", "out", "--dynamic-batch-size"]``.
        """
        args: list[str] = []
        if self.workdir is not None:
            args += ["--workdir", self.workdir]
        if self.dynamic_batch_size:
            args.append("--dynamic-batch-size")
        if self.extract_weights:
            suffix = f"={self.extract_weights_instance}" if self.extract_weights_instance else ""
            args.append("--extract-weights" + suffix)
        if self.neuroncore_pipeline_cores is not None:
            args.append(f"--neuroncore-pipeline-cores={self.neuroncore_pipeline_cores}")
        for key, spec in OPTION_SPECS.items():
            if key not in self.compiler_options:
                continue
            value = self.compiler_options[key]
            if spec.kind == "bool":
                args.append(spec.name)
            elif spec.kind == "multi":
                args += [spec.name, *str(value).split()]
            else:
                args.append(f"{spec.name}={value}")
        return args

    def to_string(self) -> str:
        """The flags as a ``NEURON_CC_FLAGS`` string (shell-quoted) that parses back to ``self``.

        Returns:
            For example ``"--workdir 'my dir' --fp32-cast=matmult"``; ``""`` for the defaults.
        """
        return shlex.join(self.to_args())


def parse_flags(value: str | list[str] | tuple[str, ...] | None) -> CompilerFlags:
    """Parse ``NEURON_CC_FLAGS`` into :class:`CompilerFlags`.

    Args:
        value: The variable's text (split like a shell command line), or the already split
            arguments; None or ``""`` gives the defaults.

    Returns:
        The validated, frozen flags.

    Raises:
        FlagsError: An unknown flag, a stray argument, a missing or malformed value, unbalanced
            quotes, or a combination the tracing API rules out (``--extract-weights`` with
            ``--dynamic-batch-size`` or ``--neuroncore-pipeline-cores``).
    """
    tokens = split_flags(value)
    fields: dict[str, Any] = {}
    options: dict[str, OptionValue] = {}
    index = 0
    while index < len(tokens):
        spec, inline = lookup(tokens[index])
        parsed, index = read_value(spec, inline, tokens, index + 1)
        if spec.name == "--extract-weights":
            fields["extract_weights"] = True
            fields["extract_weights_instance"] = None if parsed is True else parsed
        elif spec.name in FIELD_FLAGS:
            fields[FIELD_FLAGS[spec.name]] = parsed
        else:
            options[spec.name[2:]] = parsed  # a repeated option wins last, as with argparse
    check_combinations(fields.get("extract_weights", False),
                       fields.get("dynamic_batch_size", False),
                       fields.get("neuroncore_pipeline_cores"))
    return CompilerFlags(**fields, compiler_options=options)


def flags_from_env(environ: Mapping[str, str] | None = None) -> CompilerFlags:
    """Parse the ``NEURON_CC_FLAGS`` environment variable.

    Args:
        environ: The environment to read; None reads ``os.environ``.

    Returns:
        The parsed flags; the defaults when the variable is unset or blank.

    Raises:
        FlagsError: As :func:`parse_flags`.
    """
    env = os.environ if environ is None else environ
    return parse_flags(env.get("NEURON_CC_FLAGS", ""))


def xla_unsupported_options(flags: CompilerFlags) -> dict[str, str]:
    """The given options that the XLA backend cannot honour, each with the reason.

    The tracer records these in its report with a warning; it does not fail on them, so that
    flags written for Inf1 keep working here.

    Args:
        flags: Parsed flags.

    Returns:
        Flag name (``"--fp32-cast"``) to a sentence saying why it has no effect; empty when
        every given option is honoured.
    """
    gaps: dict[str, str] = {}
    if flags.neuroncore_pipeline_cores is not None:
        spec = BY_NAME["--neuroncore-pipeline-cores"]
        gaps[spec.name] = spec.xla_gap or ""
    for key, value in flags.compiler_options.items():
        spec = OPTION_SPECS[key]
        # "--fast-math none" / "no-fast-relayout" ask for exact float32, which XLA already gives.
        if spec.kind == "multi" and set(str(value).split()) <= {"none", "no-fast-relayout"}:
            continue
        if spec.xla_gap is not None:
            gaps[spec.name] = spec.xla_gap
    return gaps
