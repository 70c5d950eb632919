"""Reading flag values: tokens of ``NEURON_CC_FLAGS`` checked and converted against the flag table.

The pieces :func:`kiln_client.flags.parse_flags` and ``CompilerFlags``' validator share: split a
string like a shell command line, find a token's :class:`Spec`, read and convert its value, and
reject combinations the tracing API rules out.
"""

from __future__ import annotations

import difflib
import re
import shlex

from kiln_client._flag_table import (
    BY_NAME,
    KNOWN_FLAGS,
    OPTION_SPECS,
    FlagsError,
    OptionValue,
    Spec,
)

__all__ = ["check_combinations", "check_option", "lookup", "read_value", "split_flags"]

_NEGATIVE_NUMBER = re.compile(r"-\d+")


def split_flags(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """The tokens of a flags string (split like a shell command line) or of a list of them."""
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


def lookup(token: str) -> tuple[Spec, str | None]:
    """Find the spec for ``--name`` or ``--name=value``; the inline value, if any, comes back."""
    if not token.startswith("-") or token in ("-", "--"):
        raise FlagsError(f"unexpected argument {token!r}: NEURON_CC_FLAGS holds flags only "
                         "(did a value get separated from its flag by quoting?)")
    name, eq, inline = token.partition("=")
    spec = BY_NAME.get(name)
    if spec is None:
        close = difflib.get_close_matches(name, list(KNOWN_FLAGS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise FlagsError(f"unknown flag {name!r}{hint}", name)
    return spec, (inline if eq else None)


def _is_value(token: str) -> bool:
    return not token.startswith("-") or bool(_NEGATIVE_NUMBER.fullmatch(token))


def read_value(
    spec: Spec, inline: str | None, tokens: list[str], index: int
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


def _convert(spec: Spec, raw: str) -> OptionValue:
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


def _check_fast_math(spec: Spec, raw: str) -> str:
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


def check_option(key: str, value: object) -> None:
    """Validate one ``compiler_options`` entry of a directly constructed CompilerFlags."""
    spec = OPTION_SPECS.get(key)
    if spec is None:
        close = difflib.get_close_matches(key, list(OPTION_SPECS), n=1)
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


def check_combinations(
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
