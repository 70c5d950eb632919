"""The parent/child protocol, flag rewriting, failure wording and log batching (no TensorFlow)."""

from __future__ import annotations

import pickle
import signal
from pathlib import Path

import pytest

from kiln_client.models import FailureKind
from kiln_worker._job_io import LogBuffer, ProgressBuffer, child_failure, summarize_report
from kiln_worker._protocol import JobSpec, encode_event, parse_event, rewrite_workdir
from kiln_worker.runner import classify_exception
from kiln_worker.tracer import errors as tracer_errors


@pytest.mark.parametrize(
    ("flags", "expected", "found"),
    [
        ("", "", False),
        ("--dynamic-batch-size", "--dynamic-batch-size", False),
        ("--workdir ./w --dynamic-batch-size", "--workdir=/job/wd --dynamic-batch-size", True),
        ("--workdir=/etc", "--workdir=/job/wd", True),
        ("--neuroncore-pipeline-cores=4 --workdir '../up one'",
         "--neuroncore-pipeline-cores=4 --workdir=/job/wd", True),
    ],
)
def test_rewrite_workdir_never_keeps_the_users_path(flags: str, expected: str, found: bool) -> None:
    assert rewrite_workdir(flags, "/job/wd") == (expected, found)


def test_rewrite_workdir_without_value_is_an_error() -> None:
    with pytest.raises(ValueError, match="--workdir needs a value"):
        rewrite_workdir("--workdir --dynamic-batch-size", "/job/wd")


def test_spec_round_trips_through_json(tmp_path: Path) -> None:
    spec = JobSpec(job_id="j", model_dir="/m", output_dir="/o", error_file="/e", target="inf1",
                   input_shapes={"x": [2, 3]}, placement={"include_ops": ["MatMul"]})
    spec.write(tmp_path / "s.json")
    again = JobSpec.read(tmp_path / "s.json")
    assert again == spec
    assert again.backend == "neuron"


def test_unknown_target_names_the_known_ones() -> None:
    spec = JobSpec(job_id="j", model_dir="/m", output_dir="/o", error_file="/e", target="tpu")
    with pytest.raises(ValueError, match="known targets: inf1, xla"):
        _ = spec.backend


def test_events_parse_and_other_lines_do_not() -> None:
    line = encode_event("progress", stage="tracing", progress=0.2, message="m")
    assert parse_event(line) == {"event": "progress", "stage": "tracing", "progress": 0.2,
                                 "message": "m"}
    assert parse_event("2024 INFO something") is None
    assert parse_event("{not json") is None
    assert parse_event('{"no_event": 1}') is None


@pytest.mark.parametrize(
    ("exc", "kind", "code"),
    [
        (tracer_errors.TraceInputError("bad inputs", "inputs"), "client_error", "InvalidInputs"),
        (tracer_errors.UnsupportedModelError("hash table", "freeze"), "client_error",
         "UnsupportedModel"),
        (tracer_errors.SubgraphCompileError("boom", "compile", "s0"), "system_error",
         "TracerError"),
        (tracer_errors.ModelExecutionError("assertion failed: [x must be > 0]", "inputs"),
         "client_error", "ModelError"),
        (tracer_errors.BackendUnavailableError("no neuron", "backend"), "system_error",
         "BackendUnavailable"),
        (MemoryError(), "client_error", "MemoryLimit"),
    ],
)
def test_known_exceptions_are_classified(exc: BaseException, kind: str, code: str) -> None:
    failure = classify_exception(exc)
    assert failure is not None
    assert (failure.kind.value, failure.code.value) == (kind, code)
    assert failure.message


def test_unexpected_exceptions_are_not_classified() -> None:
    assert classify_exception(RuntimeError("bug")) is None
    assert classify_exception(KeyError("x")) is None


def test_flags_errors_are_client_errors() -> None:
    from kiln_client.flags import FlagsError, parse_flags

    with pytest.raises(FlagsError) as info:
        parse_flags("--no-such-flag")
    failure = classify_exception(info.value)
    assert failure is not None and failure.code == "InvalidFlags"
    pickle.loads(pickle.dumps(info.value))  # crosses process boundaries in Celery


def test_child_failure_reads_the_error_file(tmp_path: Path) -> None:
    error = tmp_path / "error.json"
    error.write_text('{"kind": "client_error", "code": "UnsupportedModel", "message": "no"}')
    failure = child_failure(3, error, ["a"], exit_failed=3)
    assert (failure.kind, failure.code, failure.message) == (
        FailureKind.CLIENT_ERROR, "UnsupportedModel", "no")


def test_child_failure_of_a_broken_error_file_is_a_system_error(tmp_path: Path) -> None:
    (tmp_path / "error.json").write_text("{")
    failure = child_failure(3, tmp_path / "error.json", ["last words"], exit_failed=3)
    assert failure.kind is FailureKind.SYSTEM_ERROR
    assert "last words" in failure.message


def test_child_failure_names_the_signal_and_quotes_the_log(tmp_path: Path) -> None:
    killed = child_failure(-signal.SIGKILL, tmp_path / "none", ["x", "y"], exit_failed=3)
    assert killed.code == "OOMKilled" and "SIGKILL" in killed.message and "y" in killed.message
    segv = child_failure(-signal.SIGSEGV, tmp_path / "none", [], exit_failed=3)
    assert segv.code == "WorkerError" and "SIGSEGV" in segv.message
    crash = child_failure(1, tmp_path / "none", ["Traceback: boom"], exit_failed=3)
    assert "exit status 1" in crash.message and "boom" in crash.message


def test_log_buffer_batches_and_keeps_a_tail() -> None:
    batches: list[list[str]] = []
    buf = LogBuffer(batches.append, flush_seconds=3600)
    for i in range(20):
        buf.add(f"line {i}")
    buf.flush_if_due(0.0)  # not due: nothing written yet
    assert batches == []
    buf.flush()
    assert batches == [[f"line {i}" for i in range(20)]]
    assert buf.tail()[-1] == "line 19" and len(buf.tail()) < 20


def test_progress_buffer_writes_stage_changes_at_once_and_coalesces_the_rest() -> None:
    writes: list[tuple[str, float, str]] = []
    buf = ProgressBuffer(lambda *a: writes.append(a), flush_seconds=3600)
    buf.set("compiling", 0.3, "subgraph 1 of 3")
    buf.set("compiling", 0.4, "subgraph 2 of 3")
    buf.set("compiling", 0.5, "subgraph 3 of 3")
    assert writes == [("compiling", 0.3, "subgraph 1 of 3")]
    buf.set("verifying", 0.8, "checking")
    assert writes[-1] == ("verifying", 0.8, "checking")
    assert len(writes) == 2


def test_summary_keeps_placement_and_check_but_not_op_lists() -> None:
    report = {"tracer": {"backend": "xla", "ops_total": 9, "ops_on_accelerator": 4,
                         "on_neuron_ratio": 0.44,
                         "subgraphs": [{"name": "s0", "status": "compiled", "ops": ["a", "b"],
                                        "op_types": {"MatMul": 2}, "compile_seconds": 0.1}],
                         "cpu_ops": [{"name": "c"}]},
              "numerical_check": {"max_abs_diff": 0.0, "max_abs_output": 1.0,
                                  "within_tolerance": True, "outputs": {}},
              "timings": {"total_seconds": 1.0}}
    summary = summarize_report(report)
    assert summary["subgraphs"] == [{"name": "s0", "status": "compiled",
                                     "op_types": {"MatMul": 2}, "compile_seconds": 0.1}]
    assert summary["cpu_ops"] == 1
    assert summary["numerical_check"]["within_tolerance"] is True
    assert summary["nothing_compiled"] is None


def test_summary_says_why_nothing_was_compiled_in_a_line() -> None:
    from kiln_client._cli_compile import summary_lines

    why = "every subgraph went back to CPU: kiln_subgraph_0 rejected_no_gain: " + "slower " * 200
    summary = summarize_report({"tracer": {"ops_total": 3, "ops_on_accelerator": 0,
                                           "subgraphs": [], "nothing_compiled": why}})
    assert summary["nothing_compiled"].startswith("every subgraph went back to CPU")
    assert len(summary["nothing_compiled"]) == 400
    lines = summary_lines(summary)
    assert lines[1].startswith("nothing compiled, the model runs on CPU as before: every subgraph")


def test_log_buffer_caps_an_endless_log_and_says_so() -> None:
    batches: list[list[str]] = []
    buf = LogBuffer(batches.append, flush_seconds=3600, max_lines=10)
    for i in range(25):
        buf.add(f"line {i}")
    buf.close()
    written = [line for batch in batches for line in batch]
    assert written[:10] == [f"line {i}" for i in range(10)]
    assert written[10:] == ["[kiln] 15 more log lines were dropped (limit 10 lines per attempt)"]
    assert buf.tail()[-1] == "line 24"  # failure messages still quote the real end


def test_stray_prints_in_the_child_go_to_stderr_not_the_protocol() -> None:
    import subprocess
    import sys

    script = ("import os\n"
              "from kiln_worker.runner import EventChannel\n"
              "events = EventChannel.take_stdout()\n"
              "print('stray print from model code', flush=True)\n"
              "os.write(1, b'stray C-level write\\n')\n"
              "events.progress('loading', 0.1, 'hello')\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=True)
    assert [parse_event(line) for line in proc.stdout.splitlines()] == [
        {"event": "progress", "stage": "loading", "progress": 0.1, "message": "hello"}]
    assert "stray print from model code" in proc.stderr
    assert "stray C-level write" in proc.stderr
