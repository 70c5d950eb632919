"""NEURON_CC_FLAGS parsing: kiln_client.flags (pure Python, no TensorFlow)."""

from __future__ import annotations

import pickle
import subprocess
import sys
from typing import Any

import pytest
from pydantic import ValidationError

from kiln_client.flags import (
    KNOWN_FLAGS,
    CompilerFlags,
    FlagsError,
    flags_from_env,
    parse_flags,
    xla_unsupported_options,
)

EXPECTED_KNOWN = {
    "--workdir",
    "--dynamic-batch-size",
    "--extract-weights",
    "--neuroncore-pipeline-cores",
    "--verbose",
    "--fp32-cast",
    "--fast-math",
    "--enable-saturate-infinity",
    "--enable-fast-loading-neuron-binaries",
    "--enable-fast-context-switch",
    "--static-weights",
}


def test_known_flags_are_the_documented_neuron_cc_and_tracer_flags() -> None:
    assert set(KNOWN_FLAGS) == EXPECTED_KNOWN
    assert all(usage.startswith(name) for name, usage in KNOWN_FLAGS.items())


@pytest.mark.parametrize("empty", [None, "", "   ", "\t\n", [], ()])
def test_empty_input_gives_the_defaults(empty: Any) -> None:
    flags = parse_flags(empty)
    assert flags == CompilerFlags()
    assert flags.workdir is None
    assert flags.dynamic_batch_size is False
    assert flags.extract_weights is False
    assert flags.neuroncore_pipeline_cores is None
    assert flags.compiler_options == {}
    assert flags.to_string() == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("--workdir ./artifacts", {"workdir": "./artifacts"}),
        ("--workdir=./artifacts", {"workdir": "./artifacts"}),
        ("--workdir '/tmp/my dir'", {"workdir": "/tmp/my dir"}),
        ('--workdir="/tmp/a b"', {"workdir": "/tmp/a b"}),
        ("--dynamic-batch-size", {"dynamic_batch_size": True}),
        ("--extract-weights", {"extract_weights": True, "extract_weights_instance": None}),
        ("--extract-weights=inf1.6xlarge",
         {"extract_weights": True, "extract_weights_instance": "inf1.6xlarge"}),
        ("--extract-weights inf1.xlarge",
         {"extract_weights": True, "extract_weights_instance": "inf1.xlarge"}),
        ("--neuroncore-pipeline-cores=4", {"neuroncore_pipeline_cores": 4}),
        ("--neuroncore-pipeline-cores 16", {"neuroncore_pipeline_cores": 16}),
        ("--neuroncore-pipeline-cores 1 --dynamic-batch-size",
         {"neuroncore_pipeline_cores": 1, "dynamic_batch_size": True}),
        ("--workdir a --workdir b", {"workdir": "b"}),  # last wins, as with argparse
    ],
)  # fmt: skip
def test_tracer_fields_parse(text: str, expected: dict[str, Any]) -> None:
    flags = parse_flags(text)
    for field, value in expected.items():
        assert getattr(flags, field) == value, field
    assert flags.compiler_options == {}


@pytest.mark.parametrize(
    ("text", "options"),
    [
        ("--fp32-cast=matmult", {"fp32-cast": "matmult"}),
        ("--fp32-cast all-fp16", {"fp32-cast": "all-fp16"}),
        ("--fast-math none", {"fast-math": "none"}),
        ("--fast-math fp32-cast-matmult no-fast-relayout",
         {"fast-math": "fp32-cast-matmult no-fast-relayout"}),
        ("--fast-math=fp32-cast-matmult no-fast-relayout --dynamic-batch-size",
         {"fast-math": "fp32-cast-matmult no-fast-relayout"}),
        ("--enable-saturate-infinity", {"enable-saturate-infinity": True}),
        ("--enable-fast-loading-neuron-binaries", {"enable-fast-loading-neuron-binaries": True}),
        ("--enable-fast-context-switch", {"enable-fast-context-switch": True}),
        ("--static-weights", {"static-weights": True}),
        ("--verbose=info", {"verbose": "INFO"}),
        ("--verbose DEBUG", {"verbose": "DEBUG"}),
        ("--verbose=35", {"verbose": 35}),
        ("--fp32-cast all --fp32-cast matmult", {"fp32-cast": "matmult"}),
    ],
)  # fmt: skip
def test_compiler_options_parse(text: str, options: dict[str, Any]) -> None:
    assert parse_flags(text).compiler_options == options


def test_list_input_is_taken_as_already_split_arguments() -> None:
    flags = parse_flags(["--workdir", "a b", "--fp32-cast=matmult"])
    assert flags.workdir == "a b"
    assert flags.compiler_options == {"fp32-cast": "matmult"}


def test_flags_from_env_reads_neuron_cc_flags() -> None:
    flags = flags_from_env({"NEURON_CC_FLAGS": "--dynamic-batch-size --static-weights"})
    assert flags.dynamic_batch_size is True
    assert flags.compiler_options == {"static-weights": True}
    assert flags_from_env({}) == CompilerFlags()


ROUND_TRIP = [
    "",
    "--workdir ./artifacts",
    "--workdir '/tmp/with space/and \"quotes\"'",
    "--dynamic-batch-size --neuroncore-pipeline-cores 4",
    "--extract-weights",
    "--extract-weights=inf2.48xlarge --workdir w",
    "--fast-math fp32-cast-all-fp16 fast-relayout --verbose=warn",
    "--static-weights --enable-fast-context-switch --enable-saturate-infinity",
    "--enable-fast-loading-neuron-binaries --fp32-cast matmult-bf16 --verbose 35",
    "--fp32-cast=all --fast-math all --workdir=x --dynamic-batch-size",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_to_string_round_trips(text: str) -> None:
    flags = parse_flags(text)
    again = parse_flags(flags.to_string())
    assert again == flags
    assert again.to_string() == flags.to_string()  # the canonical form is stable
    assert parse_flags(flags.to_args()) == flags


def test_to_string_is_canonical_and_quoted() -> None:
    flags = parse_flags("--static-weights --workdir 'a b' --fp32-cast matmult --dynamic-batch-size")
    assert flags.to_string() == (
        "--workdir 'a b' --dynamic-batch-size --fp32-cast=matmult --static-weights"
    )


def test_flags_are_frozen() -> None:
    flags = parse_flags("--workdir a")
    with pytest.raises(ValidationError):
        flags.workdir = "b"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "flag", "fragment"),
    [
        ("--fast-mat all", "--fast-mat", "did you mean '--fast-math'"),
        ("--bogus", "--bogus", "unknown flag '--bogus'"),
        ("-O2", "-O2", "unknown flag '-O2'"),
        ("--workdir", "--workdir", "--workdir needs a value"),
        ("--workdir --dynamic-batch-size", "--workdir", "needs a value"),
        ("--workdir=", "--workdir", "non-empty value"),
        ("--neuroncore-pipeline-cores", "--neuroncore-pipeline-cores", "needs a value"),
        ("--neuroncore-pipeline-cores=four", "--neuroncore-pipeline-cores", "whole number"),
        ("--neuroncore-pipeline-cores 2.5", "--neuroncore-pipeline-cores", "whole number"),
        ("--neuroncore-pipeline-cores=0", "--neuroncore-pipeline-cores", "at least 1, got 0"),
        ("--neuroncore-pipeline-cores -3", "--neuroncore-pipeline-cores", "at least 1, got -3"),
        ("--dynamic-batch-size=yes", "--dynamic-batch-size", "takes no value"),
        ("--static-weights=1", "--static-weights", "takes no value"),
        ("--fp32-cast=fp8", "--fp32-cast", "one of all, matmult"),
        ("--fp32-cast", "--fp32-cast", "needs a value"),
        ("--fast-math fastest", "--fast-math", "'fastest'"),
        ("--fast-math all none", "--fast-math", "all and none are mutually exclusive"),
        ("--fast-math fast-relayout no-fast-relayout", "--fast-math", "mutually exclusive"),
        ("--fast-math fp32-cast-all fp32-cast-matmult", "--fast-math", "mutually exclusive"),
        ("--verbose=loud", "--verbose", "DEBUG, INFO"),
        ("--extract-weights=inf9.huge", "--extract-weights", "inf1.2xlarge"),
        ("--extract-weights --dynamic-batch-size", "--extract-weights", "--dynamic-batch-size"),
        ("--dynamic-batch-size --extract-weights", "--extract-weights", "drop one of them"),
        ("--extract-weights --neuroncore-pipeline-cores=2", "--extract-weights",
         "--neuroncore-pipeline-cores"),
    ],
)  # fmt: skip
def test_bad_flags_name_the_flag_and_list_the_known_ones(text: str, flag: str, fragment: str) -> None:
    with pytest.raises(FlagsError) as caught:
        parse_flags(text)
    message = str(caught.value)
    assert caught.value.flag == flag
    assert flag in message
    assert fragment in message
    assert "Known flags:" in message
    for known in KNOWN_FLAGS:
        assert known in message, known
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("--workdir 'unterminated", "not a valid command line"),
        ("stray", "unexpected argument 'stray'"),
        ("--dynamic-batch-size extra", "unexpected argument 'extra'"),
        ("--", "unexpected argument '--'"),
    ],
)
def test_malformed_command_lines_are_flags_errors(text: str, fragment: str) -> None:
    with pytest.raises(FlagsError, match="Known flags:") as caught:
        parse_flags(text)
    assert fragment in str(caught.value)


def test_non_string_list_items_are_rejected() -> None:
    with pytest.raises(FlagsError, match="must all be strings"):
        parse_flags(["--workdir", 3])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"compiler_options": {"bogus": True}}, "unknown compiler option 'bogus'"),
        ({"compiler_options": {"static-weights": False}}, "is a switch"),
        ({"compiler_options": {"fp32-cast": "fp8"}}, "--fp32-cast must be one of"),
        ({"compiler_options": {"fp32-cast": True}}, "needs a value"),
        ({"neuroncore_pipeline_cores": 0}, "greater than or equal to 1"),
        ({"extract_weights": True, "dynamic_batch_size": True}, "cannot be combined"),
        ({"extract_weights_instance": "inf1.xlarge"}, "without --extract-weights"),
        ({"unknown_field": 1}, "Extra inputs are not permitted"),
    ],
)
def test_direct_construction_validates_the_same_rules(
    kwargs: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        CompilerFlags(**kwargs)
    assert fragment in str(caught.value)


def test_direct_construction_accepts_canonical_options() -> None:
    flags = CompilerFlags(compiler_options={"fp32-cast": "matmult", "verbose": 35})
    assert parse_flags(flags.to_string()) == flags


@pytest.mark.parametrize(
    ("text", "unsupported"),
    [
        ("", set()),
        ("--workdir w --dynamic-batch-size --verbose=INFO", set()),
        ("--extract-weights", set()),
        ("--fast-math none", set()),
        ("--fast-math none no-fast-relayout", set()),
        ("--fast-math all", {"--fast-math"}),
        ("--fp32-cast=matmult", {"--fp32-cast"}),
        ("--neuroncore-pipeline-cores=4", {"--neuroncore-pipeline-cores"}),
        ("--static-weights --enable-fast-context-switch",
         {"--static-weights", "--enable-fast-context-switch"}),
        ("--enable-saturate-infinity --enable-fast-loading-neuron-binaries",
         {"--enable-saturate-infinity", "--enable-fast-loading-neuron-binaries"}),
    ],
)  # fmt: skip
def test_xla_unsupported_options(text: str, unsupported: set[str]) -> None:
    gaps = xla_unsupported_options(parse_flags(text))
    assert set(gaps) == unsupported
    assert all(isinstance(reason, str) and len(reason) > 10 for reason in gaps.values())


def test_flags_error_pickles_with_its_fields() -> None:
    error = FlagsError("unknown flag '--x'", "--x")
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, FlagsError)
    assert (copy.reason, copy.flag, str(copy)) == (error.reason, error.flag, str(error))


def test_report_form_is_json_serialisable() -> None:
    flags = parse_flags("--workdir w --fast-math none --verbose=35 --static-weights")
    dumped = flags.model_dump(mode="json")
    assert dumped["workdir"] == "w"
    assert dumped["compiler_options"] == {"fast-math": "none", "verbose": 35, "static-weights": True}


def test_importing_flags_loads_no_heavy_framework() -> None:
    code = (
        "import sys, kiln_client.flags; "
        "print(sorted(m for m in ('tensorflow', 'fastapi', 'celery') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
