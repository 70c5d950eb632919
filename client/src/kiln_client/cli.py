"""``kiln``: the command line over the SDK.

Data goes to stdout (ids, paths, tables, ``--json`` objects), messages to stderr. A known error is
one line on stderr; ``KILN_DEBUG=1`` adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kiln_client._cli_cache import add_cache_commands
from kiln_client._client import Client
from kiln_client._jobs import Job
from kiln_client.codes import FailureCode
from kiln_client.errors import (
    APIError,
    ChecksumError,
    InputError,
    JobCancelled,
    JobFailed,
    KilnError,
    WaitTimeout,
)
from kiln_client.events import JobEvent, LogEvent, StageEvent, StatusEvent
from kiln_client.flags import FlagsError
from kiln_client.models import JobStatus

__all__ = ["EXIT_API", "EXIT_CANCELLED", "EXIT_FAILED", "EXIT_OK", "EXIT_TIMEOUT", "EXIT_USAGE", "main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_API, EXIT_TIMEOUT, EXIT_CANCELLED = 0, 1, 2, 3, 4, 5

_EPILOG = """\
environment:
  KILN_URL       the service's URL (default http://127.0.0.1:8000)
  KILN_API_KEY   API key, sent as a Bearer token
  KILN_DEBUG=1   print tracebacks of errors

exit codes:
  0  success
  1  the job failed (its reason and the end of its log are printed)
  2  usage error (bad arguments, model path or flags)
  3  API or network error
  4  waiting timed out (the job goes on)
  5  the job was cancelled

examples:
  kiln compile ./saved_model --inputs inputs.npz --flags "--dynamic-batch-size" --out ./compiled
  kiln compile --mlflow-model models:/resnet/3 --mlflow-register resnet-compiled --inputs in.npz
  kiln jobs list --status failed
  kiln jobs logs JOB_ID --follow
  kiln jobs watch JOB_ID
  kiln cache purge
  kiln verify ./compiled
"""


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep:
        key, sep, value = text.partition(":")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, value


def _add_compile(sub: Any) -> None:
    p = sub.add_parser("compile", help="upload a model and compile it",
                       description="Upload a SavedModel (directory or archive) and compile it.")
    p.add_argument("model", nargs="?", help="SavedModel directory or archive (.tar.gz, .tgz, "
                   ".tar, .zip), or s3://bucket/key of an archive the service fetches")
    p.add_argument("--mlflow-model", metavar="models:/NAME/VERSION",
                   help="take the model from the service's MLflow registry")
    p.add_argument("--mlflow-register", metavar="NAME", help="register the compiled model as a "
                   "new version of this MLflow model when the job succeeds")
    p.add_argument("--output-location", metavar="s3://BUCKET/PREFIX",
                   help="also write the artifacts to PREFIX/<job id>/ in this bucket")
    p.add_argument("--inputs", metavar="FILE.npz", help="example inputs keyed by signature input name")
    p.add_argument("--flags", default=None, help='NEURON_CC_FLAGS, e.g. "--dynamic-batch-size"')
    p.add_argument("--target", default="xla", help="compile target: xla (default) or inf1")
    p.add_argument("--signature", default="serving_default", help="signature to compile")
    p.add_argument("--placement", choices=["measured", "all"], default=None,
                   help="measured (default): keep a compiled subgraph unless measured clearly "
                   "slower than plain TensorFlow; all: compile every supported op, no timing")
    p.add_argument("--name", help="a name for the job")
    p.add_argument("--label", action="append", type=_label, default=[], metavar="KEY=VALUE",
                   help="a label (repeatable)")
    p.add_argument("--timeout", type=int, metavar="SECONDS", help="the compile's time limit")
    p.add_argument("--wait-timeout", type=float, metavar="SECONDS",
                   help="stop waiting after this long (exit 4; the job goes on)")
    p.add_argument("--out", metavar="DIR", help="download and extract the compiled SavedModel here")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    p.add_argument("--no-cache", action="store_true",
                   help="compile even if your compile cache holds this model, inputs, flags and "
                        "toolchain (by default such a job ends at once with the first outcome)")
    p.add_argument("--json", action="store_true", help="print the job as JSON")
    p.set_defaults(func=_cmd_compile)


def _add_jobs(sub: Any) -> None:
    jobs = sub.add_parser("jobs", help="list and manage jobs").add_subparsers(
        dest="jobs_command", metavar="{list,show,logs,watch,cancel,download,delete}", required=True
    )
    p = jobs.add_parser("list", help="list jobs, newest first")
    p.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    p.add_argument("--label", action="append", type=_label, default=[], metavar="KEY=VALUE")
    p.add_argument("--target")
    p.add_argument("--name")
    p.add_argument("--limit", type=int, default=None, help="show at most this many jobs")
    p.add_argument("--json", action="store_true", help="print a JSON array of jobs")
    p.set_defaults(func=_cmd_list)
    for name, helptext, func in (("show", "show one job", _cmd_show),
                                 ("cancel", "cancel a job", _cmd_cancel)):
        p = jobs.add_parser(name, help=helptext)
        p.add_argument("job_id")
        p.add_argument("--json", action="store_true", help="print the job as JSON")
        p.set_defaults(func=func)
    p = jobs.add_parser("logs", help="print a job's compile log")
    p.add_argument("job_id")
    p.add_argument("-f", "--follow", action="store_true", help="stream new lines until the job ends")
    p.set_defaults(func=_cmd_logs)
    p = jobs.add_parser("watch", help="follow a job's status, stage and log events until it ends")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true", help="print each event as one JSON line")
    p.set_defaults(func=_cmd_watch)
    p = jobs.add_parser("download", help="download the compiled model or an artifact")
    p.add_argument("job_id")
    p.add_argument("--out", metavar="DIR", help="destination directory (default ./<job id>)")
    p.add_argument("--artifact", metavar="NAME", help="one artifact, e.g. report.json, compile.log")
    p.set_defaults(func=_cmd_download)
    p = jobs.add_parser("delete", help="delete a finished job and its artifacts")
    p.add_argument("job_id")
    p.set_defaults(func=_cmd_delete)


def _add_verify(sub: Any) -> None:
    p = sub.add_parser(
        "verify", help="check a compiled SavedModel's manifest (no server, no TensorFlow)",
        description="Read a compiled SavedModel's Kiln manifest, recompute its content digest "
                    "and say what serving it needs. Exit 0 when nothing stands in the way, 1 when "
                    "something does, 2 when PATH holds no readable manifest.")
    p.add_argument("path", help="compiled SavedModel directory, or compiled_model.tar.gz")
    p.add_argument("--tensorflow", metavar="VERSION",
                   help="the TensorFlow that will serve it (default: the one installed here, if any)")
    p.add_argument("--json", action="store_true", help="print the manifest and findings as JSON")
    p.set_defaults(func=None, local=_cmd_verify)


def build_parser() -> argparse.ArgumentParser:
    """The ``kiln`` argument parser (exposed for tests and docs)."""
    # argparse exits with 2 on usage errors, which is our documented code for them too.
    parser = argparse.ArgumentParser(prog="kiln", description="Compile TensorFlow models with a Kiln service.",
                     epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="service URL (default: $KILN_URL)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars or messages")
    sub = parser.add_subparsers(dest="command", metavar="{compile,jobs,cache,verify}",
                                required=True)
    _add_compile(sub)
    _add_jobs(sub)
    add_cache_commands(sub)
    _add_verify(sub)
    return parser


def _say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _job_json(job: Job) -> dict[str, Any]:
    return job.model_dump(mode="json")


def _cmd_compile(client: Client, args: argparse.Namespace) -> int:
    if args.no_wait and (args.out or args.wait_timeout is not None):
        raise InputError("--out and --wait-timeout need waiting: drop --no-wait, or download "
                         "later with `kiln jobs download JOB_ID --out DIR`")
    job = client.compile(
        args.model, example_inputs=args.inputs, flags=args.flags, target=args.target,
        signature=args.signature, placement=args.placement, name=args.name,
        labels=dict(args.label), timeout=args.timeout, wait=False, progress=not args.quiet,
        mlflow_model=args.mlflow_model, mlflow_register=args.mlflow_register,
        output_location=args.output_location,
        cache=not args.no_cache,
    )
    _say(args, f"job {job.id} " + (f"answered from the compile cache (job {job.cache.job})"
                                   if job.cache and job.cache.hit else "queued"))
    if not args.no_wait:
        try:
            job.wait(args.wait_timeout, progress=not args.quiet)
        finally:
            if args.json:
                _print_json(_job_json(job))
        _say(args, f"job {job.id} succeeded")
        for line in summary_lines(job.report):
            _say(args, f"  {line}")
        for export in job.exports:
            _say(args, f"  {export.kind} export {export.status}: {export.location}"
                 + (f" ({export.detail})" if export.detail else ""))
        if args.out:
            path = job.download(args.out, progress=not args.quiet)
            _say(args, f"compiled SavedModel written to {path}")
            if not args.json:
                print(path)
        elif not args.json:
            print(job.id)
        return EXIT_OK
    print(json.dumps(_job_json(job), indent=2) if args.json else job.id)
    return EXIT_OK


def summary_lines(report: dict[str, Any] | None) -> list[str]:
    """Three lines from a succeeded job's report: placement, numerical check, speed."""
    if not report:
        return []
    compiled = sum(1 for s in report.get("subgraphs") or [] if s.get("status") == "compiled")
    check = report.get("numerical_check") or {}
    lines = [
        f"placement: {report.get('ops_on_accelerator')} of {report.get('ops_total')} ops "
        f"compiled ({report.get('on_neuron_ratio', 0) or 0:.0%}) in {compiled} subgraph(s)",
        f"numerical check: max abs diff {check.get('max_abs_diff', float('nan')):.3g} on outputs "
        f"up to {check.get('max_abs_output', float('nan')):.3g}, "
        + ("within tolerance" if check.get("within_tolerance") else "OUTSIDE tolerance"),
    ]
    parts = []
    for size, entry in ((report.get("speed") or {}).get("batches") or {}).items():
        if "speedup" in entry:
            parts.append(f"batch {size} {entry['speedup']}x ({entry['original_ms']:.3g} → "
                         f"{entry['compiled_ms']:.3g} ms)")
    lines.append("speed: " + ("; ".join(parts) if parts else "not measured"))
    return lines


def _cmd_list(client: Client, args: argparse.Namespace) -> int:
    jobs: list[Job] = []
    for job in client.jobs.list(status=args.status, label=dict(args.label) or None,
                                target=args.target, name=args.name):
        if args.limit is not None and len(jobs) >= args.limit:
            break
        jobs.append(job)
    if args.json:
        _print_json([_job_json(j) for j in jobs])
        return EXIT_OK
    for job in jobs:
        created = job.created_at.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{job.id}  {job.status.value:<9}  {job.target:<4}  {created}  {job.name or ''}".rstrip())
    return EXIT_OK


def _describe(job: Job) -> str:
    lines = [f"id:        {job.id}", f"status:    {job.status.value}",
             f"stage:     {job.stage.value}" + (f" ({job.stage_message})" if job.stage_message else ""),
             f"progress:  {job.progress * 100:.0f}%", f"target:    {job.target}",
             f"flags:     {job.flags}", f"created:   {job.created_at.isoformat()}"]
    if job.name:
        lines.append(f"name:      {job.name}")
    if job.labels:
        lines.append("labels:    " + ", ".join(f"{k}={v}" for k, v in job.labels.items()))
    if job.cache and job.cache.hit:
        lines.append(f"cache:     hit (the outcome of job {job.cache.job})")
    if job.failure:
        lines.append(f"failure:   [{job.failure.kind.value}/{job.failure.code}] {job.failure.message}")
    lines.extend(f"artifact:  {a.name} ({a.size} bytes)" for a in job.artifacts)
    return "\n".join(lines)


def _cmd_show(client: Client, args: argparse.Namespace) -> int:
    job = client.jobs.get(args.job_id)
    print(json.dumps(_job_json(job), indent=2) if args.json else _describe(job))
    return EXIT_OK


def _cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    job = client.jobs.cancel(args.job_id)
    _say(args, f"job {job.id}: cancel requested (status {job.status.value})")
    print(json.dumps(_job_json(job), indent=2) if args.json else job.id)
    return EXIT_OK


def _cmd_logs(client: Client, args: argparse.Namespace) -> int:
    job = client.jobs.get(args.job_id)
    for line in job.logs(follow=args.follow):
        print(line, flush=args.follow)
    return EXIT_OK


def _cmd_watch(client: Client, args: argparse.Namespace) -> int:
    job = client.jobs.get(args.job_id)
    for event in job.events():
        if args.json:
            print(json.dumps({"event": type(event).__name__.removesuffix("Event").lower(),
                              **event.model_dump(mode="json", exclude={"job"})}), flush=True)
        else:
            print(_event_line(event), flush=True)
    if job.status is JobStatus.CANCELLED:
        return EXIT_CANCELLED
    return EXIT_OK if job.status is JobStatus.SUCCEEDED else EXIT_FAILED


def _event_line(event: JobEvent) -> str:
    if isinstance(event, StatusEvent):
        return f"status   {event.status.value}"
    if isinstance(event, StageEvent):
        return f"stage    {event.stage.value} {event.progress:4.0%} {event.message or ''}".rstrip()
    if isinstance(event, LogEvent):
        return f"log      {event.line}"
    return f"end      {event.status.value if event.status else ''}".rstrip()


def _cmd_download(client: Client, args: argparse.Namespace) -> int:
    job = client.jobs.get(args.job_id)
    out = Path(args.out or job.id)
    if args.artifact:
        out.mkdir(parents=True, exist_ok=True)
        path = job.download_artifact(args.artifact, out, progress=not args.quiet)
    else:
        path = job.download(out, progress=not args.quiet)
    _say(args, f"written to {path}")
    print(path)
    return EXIT_OK


def _cmd_delete(client: Client, args: argparse.Namespace) -> int:
    client.jobs.delete(args.job_id)
    _say(args, f"job {args.job_id} deleted")
    return EXIT_OK


def _report_failure(exc: JobFailed) -> None:
    print(f"kiln: {exc}", file=sys.stderr)
    if isinstance(exc.code, FailureCode):
        print(f"what to do: {exc.code.action} (all codes: GET /docs/errors#{exc.code.value})",
              file=sys.stderr)
    if exc.log_tail:
        print("--- end of the compile log ---", file=sys.stderr)
        for line in exc.log_tail:
            print(f"  {line}", file=sys.stderr)
    print(f"full log: kiln jobs logs {exc.job.id}", file=sys.stderr)


def _run(func: Callable[[Client, argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command and map exceptions to exit codes (one line each)."""
    debug = os.environ.get("KILN_DEBUG", "") not in ("", "0")
    try:
        with Client(base_url=args.url) as client:
            return func(client, args)
    except KilnError as exc:
        if debug:
            traceback.print_exc()
        if isinstance(exc, JobFailed):
            _report_failure(exc)
            return EXIT_FAILED
        print(f"kiln: error: {exc}", file=sys.stderr)
        for err_type, code in ((JobCancelled, EXIT_CANCELLED), (WaitTimeout, EXIT_TIMEOUT),
                               (InputError, EXIT_USAGE), (APIError, EXIT_API), (ChecksumError, EXIT_API)):
            if isinstance(exc, err_type):
                return code
        return EXIT_API
    except FlagsError as exc:
        if debug:
            traceback.print_exc()
        print(f"kiln: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("kiln: interrupted", file=sys.stderr)
        return 130


def _installed_tensorflow() -> str | None:
    from importlib import metadata

    for dist in ("tensorflow", "tensorflow-cpu", "tf-nightly"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _cmd_verify(args: argparse.Namespace) -> int:
    import tempfile

    from kiln_client._artifacts import extract_saved_model
    from kiln_client.manifest import ManifestError, check_manifest, read_manifest

    path = Path(args.path)
    with tempfile.TemporaryDirectory(prefix="kiln-verify-") as tmp:
        try:
            directory = path if path.is_dir() else extract_saved_model(path, Path(tmp) / "model")
            manifest = read_manifest(directory)
        except (ManifestError, OSError, ValueError) as exc:
            print(f"kiln: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        tf_version = args.tensorflow or _installed_tensorflow()
        findings = check_manifest(manifest, directory, tf_version)
    if args.json:
        _print_json({"manifest": manifest.model_dump(mode="json"), "tensorflow": tf_version,
                     "findings": [f.model_dump() for f in findings]})
    else:
        summary = manifest.placement_summary
        print(f"compiled by kiln-worker {manifest.versions.get('kiln-worker', '?')} with "
              f"TensorFlow {manifest.versions.get('tensorflow', '?')} ({manifest.backend}, "
              f"placement {manifest.placement}, flags {manifest.flags or 'none'})")
        print(f"placement: {summary.get('ops_on_accelerator')} of {summary.get('ops_total')} ops "
              f"compiled in {summary.get('subgraphs_compiled')} subgraph(s)")
        print(f"serves on TensorFlow >={manifest.serving.tensorflow_min},"
              f"<{manifest.serving.tensorflow_below}" + (f" (checked against {tf_version})"
                                                          if tf_version else ""))
        for finding in findings:
            print(f"{finding.severity}: {finding.message}")
    return EXIT_FAILED if any(f.severity == "error" for f in findings) else EXIT_OK


def _glue_flags_value(argv: Sequence[str]) -> list[str]:
    """Turn ``--flags VALUE`` into ``--flags=VALUE``.

    argparse takes a lone value starting with ``--`` (``--flags --dynamic-batch-size``) for an
    option; compiler flags always look like that.
    """
    out: list[str] = []
    it = iter(argv)
    for token in it:
        if token == "--flags":
            value = next(it, None)
            out.append(token if value is None else f"--flags={value}")
        else:
            out.append(token)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``kiln``.

    Args:
        argv: arguments without the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
        The exit code (see ``kiln --help``).
    """
    parser = build_parser()
    args = parser.parse_args(_glue_flags_value(sys.argv[1:] if argv is None else argv))
    if args.command == "compile" and not (args.model or args.mlflow_model):
        parser.error("compile needs a model: a path, s3://bucket/key, or --mlflow-model")
    if os.environ.get("KILN_DEBUG", "") not in ("", "0"):
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "local", None) is not None:
        return int(args.local(args))
    return _run(args.func, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
