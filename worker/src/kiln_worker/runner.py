"""The compile child process: ``python -m kiln_worker.runner SPEC.json``.

It runs one compile and exits; TensorFlow lives here and never in the Celery process. See
:mod:`kiln_worker._protocol` for the spec, the stdout event lines and the exit codes. Stages:
``loading`` (SavedModel, signature, example inputs, the original's outputs), ``tracing`` and
``compiling`` (from ``kiln_worker.trace``'s progress), ``verifying`` (the saved compiled model is
reloaded and its ``serving_default`` outputs compared with the original's), ``storing`` (packing).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import sys
import tarfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from kiln_client._artifacts import TAR_GZ_COMPRESSLEVEL
from kiln_client.codes import FailureCode
from kiln_worker._check import check_reloaded, measure_compiled_speed, run_model
from kiln_worker._failures import (
    JobError,
    classify_exception,
    model_error_text,
)
from kiln_worker._protocol import EXIT_FAILED, EXIT_OK, Handoff, JobSpec, encode_event
from kiln_worker._supervise import apply_rlimits
from kiln_worker._tracing import runner_trace
from kiln_worker.tracer.tolerance import nondeterministic_outputs

__all__ = ["EventChannel", "classify_exception", "main"]

logger = logging.getLogger("kiln_worker.runner")

#: where each tracer stage sits in the job's overall progress (start, end)
_TRACER_SPAN = {"tracing": (0.10, 0.30), "compiling": (0.30, 0.75), "verifying": (0.75, 0.80)}


class EventChannel:
    """Writes protocol lines to the parent, on a private copy of the original stdout.

    :meth:`take_stdout` moves file descriptor 1 onto stderr, so stray prints (from TensorFlow or
    from model code) land in the log instead of corrupting the protocol.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        #: called with the stage of each progress event (the trace's stage spans), if set
        self.on_stage: Callable[[str], None] | None = None

    @classmethod
    def take_stdout(cls) -> EventChannel:
        """Claim the process's stdout for events and send fd 1 to stderr from now on."""
        sys.stdout.flush()
        private_fd = os.dup(1)
        os.dup2(2, 1)
        return cls(os.fdopen(private_fd, "w", buffering=1, encoding="utf-8"))

    def send(self, event: str, **fields: Any) -> None:
        """Send one event line; callable from any thread."""
        with self._lock:
            self._stream.write(encode_event(event, **fields) + "\n")
            self._stream.flush()

    def progress(self, stage: str, progress: float, message: str) -> None:
        """Send a ``progress`` event (``progress`` is the job's overall fraction, 0..1)."""
        if self.on_stage is not None:
            self.on_stage(stage)
        self.send("progress", stage=stage, progress=round(progress, 4), message=message)

    def log(self, line: str) -> None:
        """Send a ``log`` event: a line for the job log."""
        self.send("log", line=line)


def main(argv: list[str] | None = None) -> int:
    """Run the compile described by the spec file named in ``argv``.

    ``--wait BOX`` starts a process ahead of its job, in the job folder ``BOX`` (named only so
    that ``ps`` shows it): it imports TensorFlow and Kiln, sends ``ready``, then reads the
    job's :class:`~kiln_worker._protocol.Handoff` from stdin and runs that one job. With
    ``--rehearse`` (a process started before any job wants it) it also compiles a small model
    of its own first (:mod:`kiln_worker._preload`).

    Returns:
        The process exit code: 0 success (or a waiting process whose stdin closed without a
        job), 3 a failure written to the spec's ``error_file``, 1 an unexpected error
        (traceback on stderr), 2 a usage error.
    """
    args = sys.argv[1:] if argv is None else argv
    rehearse = args[2:] == ["--rehearse"]
    waiting = len(args) in (2, 3) and args[0] == "--wait" and (len(args) == 2 or rehearse)
    if not waiting and (len(args) != 1 or args[0].startswith("-")):
        print("usage: python -m kiln_worker.runner SPEC.json | --wait BOX [--rehearse]",
              file=sys.stderr)
        return 2
    events = EventChannel.take_stdout()
    if waiting:
        handoff = _wait_for_job(events, rehearse)
        if handoff is None:
            return EXIT_OK
        spec_path = Path(handoff.spec)
    else:
        spec_path = Path(args[0])
    spec = JobSpec.read(spec_path)
    _configure_logging(spec.job_id)
    logger.info("job %s: compile child pid %d (target %s)", spec.job_id, os.getpid(), spec.target)
    try:
        with runner_trace(events.send, {"kiln.job_id": spec.job_id, "kiln.target": spec.target,
                                        "process.pid": os.getpid()}) as events.on_stage:
            _compile(spec, events)
    except BaseException as exc:
        failure = classify_exception(exc)
        if failure is None:
            traceback.print_exc(file=sys.stderr)
            return 1
        Path(spec.error_file).write_text(failure.model_dump_json())
        logger.error("job %s failed: %s: %s", spec.job_id, failure.code, failure.message)
        return EXIT_FAILED
    return EXIT_OK


def _wait_for_job(events: EventChannel, rehearse: bool) -> Handoff | None:
    """Load TensorFlow and Kiln (and rehearse a compile), say ``ready``, then wait for the job
    on stdin (``None``: none).

    Nothing of a job has run in this process yet, so everything before the handoff is Kiln's
    own code; the job's limits are applied before its spec is even read.
    """
    from kiln_worker._preload import preload

    preload(rehearse)
    events.send("ready")
    line = sys.stdin.readline()
    # Nothing more comes on stdin: the job's code gets /dev/null there, as a cold child does.
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    if not line.strip():
        return None  # the worker discarded this process (shutting down)
    handoff = Handoff.decode(line)
    apply_rlimits(handoff.rlimits)
    os.environ.update(handoff.environment)  # the job's trace context, when traced
    if handoff.attempt:
        os.environ["KILN_JOB_ATTEMPT"] = str(handoff.attempt)
    return handoff


def _configure_logging(job_id: str) -> None:
    """Log to stderr (into the job's log) as the worker does: JSON or text, with job and attempt."""
    from kiln_service.logs import bind, configure_logging

    fmt = "json" if os.environ.get("KILN_LOG_FORMAT") == "json" else "text"
    configure_logging(fmt, logging.INFO, stream=sys.stderr, static={"service": "compile"})
    attempt = os.environ.get("KILN_JOB_ATTEMPT", "")
    bind(job_id=job_id, attempt=int(attempt) if attempt.isdigit() else None)


class _Stopwatch:
    """Seconds per stage of one compile, for the report's ``timings``."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        mark = time.perf_counter()
        yield
        self.seconds[f"{name}_seconds"] = time.perf_counter() - mark

    def rounded(self) -> dict[str, float]:
        """Each stage's seconds, then ``total_seconds``, to 0.1 ms."""
        total = {"total_seconds": time.perf_counter() - self.started}
        return {k: round(v, 4) for k, v in {**self.seconds, **total}.items()}


def _compile(spec: JobSpec, events: EventChannel) -> None:
    # Keras 2 (tf_keras) as tf.keras, as the tracer's returned model and tensorflow-neuron
    # users expect; must be set before TensorFlow is imported.
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tensorflow as tf

    from kiln_worker._inputs import placement_callback, prepare_inputs, signature_specs

    clock = _Stopwatch()
    with clock.stage("load"):
        events.progress("loading", 0.02, "loading the SavedModel")
        _loaded, fn = _load_signature(tf, spec)  # _loaded owns the variables fn uses: keep it
        inputs = prepare_inputs(signature_specs(fn), spec.example_inputs, spec.input_shapes,
                                spec.seed)
        expected, reference_reason = run_model(tf, fn, inputs,
                                                "the model failed on the example inputs")
    events.progress("tracing", 0.10, "tracing the signature")
    _test_hook_sleep()
    with clock.stage("trace"):
        model = _trace(spec, fn, inputs, placement_callback(spec.placement), events)
    events.progress("verifying", 0.80, "saving and reloading the compiled model")
    compiled_dir = Path(spec.output_dir) / "compiled_model"
    with clock.stage("save"):
        model.save(str(compiled_dir))
        manifest = _write_manifest(spec, compiled_dir, getattr(model, "report", None))
    with clock.stage("verify"):
        tracer_check = (getattr(model, "report", None) or {}).get("numerical_check")
        check, reloaded = check_reloaded(tf, compiled_dir, inputs, expected,
                                         nondeterministic_outputs(tracer_check))
    events.log(f"numerical check: max_abs_diff={check['max_abs_diff']:.3g} "
               f"within_tolerance={check['within_tolerance']}")
    with clock.stage("speed"):
        speed = measure_compiled_speed(fn, reloaded, inputs)
    events.progress("storing", 0.90, "packing the compiled model")
    with clock.stage("pack"):
        _pack(compiled_dir, Path(spec.output_dir) / "compiled_model.tar.gz")
    report = {
        "tracer": getattr(model, "report", None), "numerical_check": check,
        "timings": clock.rounded(), "versions": _versions(tf),
        "inputs": {n: {"dtype": t.dtype.name, "shape": t.shape.as_list()} for n, t in inputs.items()},
        "inputs_generated": spec.example_inputs is None,
        "verify": {"reference": "xla" if reference_reason else "tensorflow",
                   "reason": reference_reason},
        "manifest": manifest, "speed": speed,
    }
    (Path(spec.output_dir) / "report.json").write_text(json.dumps(report, indent=2, default=str))


def _placement_label(spec: JobSpec, report: Any) -> str:
    """The placement mode the tracer used, with ``+spec`` when op or name rules applied."""
    from kiln_worker._inputs import placement_callback

    recorded = (report or {}).get("placement") if isinstance(report, dict) else None
    mode = (recorded or {}).get("mode") or spec.placement_mode or "measured"
    return f"{mode}+spec" if placement_callback(spec.placement) is not None else str(mode)


def _write_manifest(spec: JobSpec, compiled_dir: Path, report: Any) -> dict[str, Any]:
    """Write ``assets.extra/kiln-manifest.json`` into the compiled model; return it as a dict."""
    from kiln_worker.manifest import build_manifest, write_manifest

    manifest = build_manifest(
        compiled_dir, report=report, flags=spec.flags,
        placement=_placement_label(spec, report), backend=spec.backend,
        target=spec.target, job_id=spec.job_id, upload_digests=spec.upload_digests,
    )
    write_manifest(compiled_dir, manifest)
    return manifest.model_dump(mode="json")


def _load_signature(tf: Any, spec: JobSpec) -> tuple[Any, Any]:
    try:
        loaded = tf.saved_model.load(spec.model_dir)
    except Exception as exc:  # TensorFlow raises many types for a broken SavedModel
        raise JobError(FailureCode.INVALID_MODEL,
                       f"cannot load the SavedModel: {model_error_text(exc)}") from exc
    signatures = dict(loaded.signatures)
    if spec.signature not in signatures:
        raise JobError(
            FailureCode.UNKNOWN_SIGNATURE,
            f"the SavedModel has no signature {spec.signature!r}; it has {sorted(signatures)}",
        )
    return loaded, signatures[spec.signature]


def _test_hook_sleep() -> None:
    # TEST HOOK (off unless the worker's KILN_WORKER_TEST_HOOK_CHILD_SLEEP_SECONDS is set, which
    # the worker passes on under the same name): makes a compile last long enough for
    # fault-injection tests to act mid-job.
    seconds = float(os.environ.get("KILN_WORKER_TEST_HOOK_CHILD_SLEEP_SECONDS", "0") or 0)
    if seconds > 0:
        logger.info("test hook: sleeping %.1f s before tracing", seconds)
        time.sleep(seconds)


def _trace(spec: JobSpec, fn: Any, inputs: dict[str, Any], sbf: Any, events: EventChannel) -> Any:
    from kiln_worker import trace

    def on_progress(stage: str, fraction: float, message: str) -> None:
        start, end = _TRACER_SPAN.get(stage, (0.10, 0.80))
        fraction = min(max(float(fraction), 0.0), 1.0)
        events.progress(stage, start + (end - start) * fraction, message)

    return trace(fn, inputs, sbf, flags=spec.flags, backend=spec.backend,
                 placement=spec.placement_mode, on_progress=on_progress)


def _pack(directory: Path, archive: Path) -> None:
    with tarfile.open(archive, "w:gz", compresslevel=TAR_GZ_COMPRESSLEVEL) as tar:
        tar.add(directory, arcname=directory.name)


def _versions(tf: Any) -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version(), "tensorflow": tf.__version__}
    for dist in ("tf-keras", "numpy", "kiln-worker"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "unknown"
    return versions


def _exit(code: int) -> None:
    """End the process without the interpreter's teardown, everything being written.

    Unloading TensorFlow takes a second or more and does nothing the job needs: its outputs
    are closed files, and events and log lines were flushed as they were written.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    _exit(main())
