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

import dataclasses
import difflib
import os
import re
import shlex
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "KNOWN_FLAGS",
    "CompilerFlags",
    "FlagsError",
    "flags_from_env",
    "parse_flags",
    "xla_unsupported_options",
]

_Kind = Literal["bool", "int", "str", "choice", "multi", "verbose", "instance"]
OptionValue = str | int | bool


@dataclasses.dataclass(frozen=True)
class _Spec:
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
_SPECS: tuple[_Spec, ...] = (
    _Spec("--workdir", "str", "--workdir DIR"),
    _Spec("--dynamic-batch-size", "bool", "--dynamic-batch-size"),
    _Spec("--extract-weights", "instance", "--extract-weights[=INSTANCE]", _INSTANCES),
    _Spec(
        "--neuroncore-pipeline-cores", "int", "--neuroncore-pipeline-cores N",
        xla_gap="XLA on CPU has no NeuronCore pipeline; each subgraph is compiled for one CPU device",
    ),
    _Spec("--verbose", "verbose", "--verbose {DEBUG,INFO,WARN,ERROR}", _VERBOSE),
    _Spec(
        "--fp32-cast", "choice", "--fp32-cast {" + ",".join(_FP32_CAST) + "}", _FP32_CAST,
        xla_gap="XLA keeps float32 arithmetic; no automatic cast to bf16/fp16 is applied",
    ),
    _Spec(
        "--fast-math", "multi", "--fast-math VALUE [VALUE ...]", _FAST_MATH,
        xla_gap="XLA keeps float32 arithmetic and exact transposes; fast-math casts are not applied",
    ),
    _Spec(
        "--enable-saturate-infinity", "bool", "--enable-saturate-infinity",
        xla_gap="XLA keeps IEEE infinities; they are not saturated to the float range",
    ),
    _Spec("--enable-fast-loading-neuron-binaries", "bool",
          "--enable-fast-loading-neuron-binaries", xla_gap=_NO_NEFF),
    _Spec("--enable-fast-context-switch", "bool", "--enable-fast-context-switch",
          xla_gap="XLA on CPU loads all weights with the model; there is no context switch"),
    _Spec("--static-weights", "bool", "--static-weights",
          xla_gap="XLA on CPU keeps weights in host memory; there is no on-chip weight cache"),
)
_BY_NAME: dict[str, _Spec] = {spec.name: spec for spec in _SPECS}
# Flags that are fields of CompilerFlags; every other flag lives in compiler_options.
_FIELD_FLAGS = {
    "--workdir": "workdir",
    "--dynamic-batch-size": "dynamic_batch_size",
    "--extract-weights": "extract_weights",
    "--neuroncore-pipeline-cores": "neuroncore_pipeline_cores",
}
_OPTION_SPECS = {spec.name[2:]: spec for spec in _SPECS if spec.name not in _FIELD_FLAGS}

#: Every flag Kiln accepts in ``NEURON_CC_FLAGS``, mapped to its usage line.
KNOWN_FLAGS: Mapping[str, str] = MappingProxyType({spec.name: spec.usage for spec in _SPECS})
_NEGATIVE_NUMBER = re.compile(r"-\d+")


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
            _check_option(key, value)
        if self.extract_weights_instance is not None and not self.extract_weights:
            raise FlagsError("extract_weights_instance is set without --extract-weights",
                             "--extract-weights")
        _check_combinations(self.extract_weights, self.dynamic_batch_size,
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
        for key, spec in _OPTION_SPECS.items():
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
    tokens = _split(value)
    fields: dict[str, Any] = {}
    options: dict[str, OptionValue] = {}
    index = 0
    while index < len(tokens):
        spec, inline = _lookup(tokens[index])
        parsed, index = _read_value(spec, inline, tokens, index + 1)
        if spec.name == "--extract-weights":
            fields["extract_weights"] = True
            fields["extract_weights_instance"] = None if parsed is True else parsed
        elif spec.name in _FIELD_FLAGS:
            fields[_FIELD_FLAGS[spec.name]] = parsed
        else:
            options[spec.name[2:]] = parsed  # a repeated option wins last, as with argparse
    _check_combinations(fields.get("extract_weights", False),
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
        spec = _BY_NAME["--neuroncore-pipeline-cores"]
        gaps[spec.name] = spec.xla_gap or ""
    for key, value in flags.compiler_options.items():
        spec = _OPTION_SPECS[key]
        # "--fast-math none" / "no-fast-relayout" ask for exact float32, which XLA already gives.
        if spec.kind == "multi" and set(str(value).split()) <= {"none", "no-fast-relayout"}:
            continue
        if spec.xla_gap is not None:
            gaps[spec.name] = spec.xla_gap
    return gaps


def _split(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as err:  # "No closing quotation", "No escaped character"
            raise FlagsError(f"NEURON_CC_FLAGS is not a valid command line ({err}): {value!r}") from err
    if not all(isinstance(token, str) for token in value):
        raise FlagsError(f"flags given as a list must all be strings, got {list(value)!r}")
    return list(value)


def _lookup(token: str) -> tuple[_Spec, str | None]:
    """Find the spec for ``--name`` or ``--name=value``; the inline value, if any, comes back."""
    if not token.startswith("-") or token in ("-", "--"):
        raise FlagsError(f"unexpected argument {token!r}: NEURON_CC_FLAGS holds flags only "
                         "(did a value get separated from its flag by quoting?)")
    name, eq, inline = token.partition("=")
    spec = _BY_NAME.get(name)
    if spec is None:
        close = difflib.get_close_matches(name, list(KNOWN_FLAGS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise FlagsError(f"unknown flag {name!r}{hint}", name)
    return spec, (inline if eq else None)


def _is_value(token: str) -> bool:
    return not token.startswith("-") or bool(_NEGATIVE_NUMBER.fullmatch(token))


def _read_value(
    spec: _Spec, inline: str | None, tokens: list[str], index: int
) -> tuple[OptionValue, int]:
    """Read the value of ``spec`` from ``inline`` or the following tokens; returns the next index."""
    if spec.kind == "bool":
        if inline is not None:
            raise FlagsError(f"{spec.name} is a switch and takes no value, got {inline!r}", spec.name)
        return True, index
    if spec.kind == "instance":
        if inline is None and index < len(tokens) and tokens[index] in spec.choices:
            inline, index = tokens[index], index + 1
        return (True if inline is None else _convert(spec, inline)), index
    if inline is None:
        if index >= len(tokens) or not _is_value(tokens[index]):
            raise FlagsError(f"{spec.name} needs a value: {spec.usage}", spec.name)
        inline, index = tokens[index], index + 1
    if spec.kind == "multi":
        values = [inline]
        while index < len(tokens) and _is_value(tokens[index]):
            values.append(tokens[index])
            index += 1
        inline = " ".join(values)
    return _convert(spec, inline), index


def _convert(spec: _Spec, raw: str) -> OptionValue:
    """Turn the text of a value into its typed form, or raise FlagsError naming the flag."""
    if raw == "":
        raise FlagsError(f"{spec.name} needs a non-empty value: {spec.usage}", spec.name)
    if spec.kind == "int":
        try:
            number = int(raw)
        except ValueError:
            raise FlagsError(f"{spec.name} needs a whole number, got {raw!r}", spec.name) from None
        if number < 1:
            raise FlagsError(f"{spec.name} must be at least 1, got {number}", spec.name)
        return number
    if spec.kind == "verbose":
        if raw.isdigit():  # tensorflow-neuron itself passes numeric levels such as --verbose=35
            return int(raw)
        if raw.upper() not in spec.choices:
            raise FlagsError(f"{spec.name} must be one of {', '.join(spec.choices)} or a number, "
                             f"got {raw!r}", spec.name)
        return raw.upper()
    if spec.kind in ("choice", "instance"):
        if raw not in spec.choices:
            raise FlagsError(f"{spec.name} must be one of {', '.join(spec.choices)}, got {raw!r}",
                             spec.name)
        return raw
    if spec.kind == "multi":
        return _check_fast_math(spec, raw)
    return raw


def _check_fast_math(spec: _Spec, raw: str) -> str:
    values = raw.split()
    bad = [value for value in values if value not in spec.choices]
    if bad:
        raise FlagsError(f"{spec.name} got {', '.join(map(repr, bad))}; its values are "
                         f"{', '.join(spec.choices)}", spec.name)
    # neuron-cc's rules: these groups are mutually exclusive.
    groups = (
        ("all", "none"),
        ("fast-relayout", "no-fast-relayout"),
        tuple(value for value in spec.choices if value.startswith("fp32-cast-")),
    )
    for group in groups:
        chosen = sorted({value for value in values if value in group})
        if len(chosen) > 1:
            raise FlagsError(f"{spec.name} values {' and '.join(chosen)} are mutually exclusive",
                             spec.name)
    return " ".join(values)


def _check_option(key: str, value: object) -> None:
    """Validate one ``compiler_options`` entry of a directly constructed CompilerFlags."""
    spec = _OPTION_SPECS.get(key)
    if spec is None:
        close = difflib.get_close_matches(key, list(_OPTION_SPECS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise FlagsError(f"unknown compiler option {key!r}{hint}", f"--{key}")
    if spec.kind == "bool":
        if value is not True:
            raise FlagsError(f"compiler option {key!r} is a switch: give it as True or omit it",
                             spec.name)
        return
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise FlagsError(f"compiler option {key!r} needs a value: {spec.usage}", spec.name)
    if spec.kind == "verbose" and isinstance(value, int):
        return
    if _convert(spec, str(value)) != value:
        raise FlagsError(f"compiler option {key!r} is not in canonical form: {value!r}", spec.name)


def _check_combinations(
    extract_weights: bool, dynamic_batch_size: bool, pipeline_cores: int | None
) -> None:
    """Reject what the tracing API documents as unsupported with ``--extract-weights``."""
    if not extract_weights:
        return
    if dynamic_batch_size:
        raise FlagsError("--extract-weights cannot be combined with --dynamic-batch-size (the "
                         "tracing API rules it out); drop one of them", "--extract-weights")
    if pipeline_cores is not None:
        raise FlagsError("--extract-weights cannot be combined with --neuroncore-pipeline-cores "
                         "(the tracing API rules it out); drop one of them", "--extract-weights")
