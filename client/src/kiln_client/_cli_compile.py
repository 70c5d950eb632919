"""``kiln compile``: upload a model, compile it, wait, and download the result."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from kiln_client._cli_common import EXIT_OK, job_json, label, print_json, say
from kiln_client.errors import InputError

if TYPE_CHECKING:
    from kiln_client._client import Client
    from kiln_client._jobs import Job

__all__ = ["add_compile_command", "summary_lines"]


def add_compile_command(sub: Any) -> None:
    """Add ``kiln compile`` to the ``kiln`` parser."""
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
    p.add_argument("--label", action="append", type=label, default=[], metavar="KEY=VALUE",
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
    say(args, f"job {job.id} " + (f"answered from the compile cache (job {job.cache.job})"
                                  if job.cache and job.cache.hit else "queued"))
    if not args.no_wait:
        try:
            job.wait(args.wait_timeout, progress=not args.quiet)
        finally:
            if args.json:
                print_json(job_json(job))
        _say_outcome(args, job)
        if args.out:
            path = job.download(args.out, progress=not args.quiet)
            say(args, f"compiled SavedModel written to {path}")
            if not args.json:
                print(path)
        elif not args.json:
            print(job.id)
        return EXIT_OK
    print(json.dumps(job_json(job), indent=2) if args.json else job.id)
    return EXIT_OK


def _say_outcome(args: argparse.Namespace, job: Job) -> None:
    """On stderr: the succeeded job's summary and its exports."""
    say(args, f"job {job.id} succeeded")
    for line in summary_lines(job.report):
        say(args, f"  {line}")
    for export in job.exports:
        say(args, f"  {export.kind} export {export.status}: {export.location}"
            + (f" ({export.detail})" if export.detail else ""))


def _number(value: Any) -> float:
    """A figure of the report, NaN when it is missing (a summary without a numerical check)."""
    return float("nan") if value is None else float(value)


def summary_lines(report: dict[str, Any] | None) -> list[str]:
    """Lines from a succeeded job's report: placement (and why nothing was compiled, if so),
    numerical check, speed."""
    if not report:
        return []
    compiled = sum(1 for s in report.get("subgraphs") or [] if s.get("status") == "compiled")
    check = report.get("numerical_check") or {}
    lines = [
        f"placement: {report.get('ops_on_accelerator')} of {report.get('ops_total')} ops "
        f"compiled ({report.get('on_neuron_ratio', 0) or 0:.0%}) in {compiled} subgraph(s)",
        *([f"nothing compiled, the model runs on CPU as before: {report['nothing_compiled']}"]
          if report.get("nothing_compiled") else []),
        f"numerical check: max abs diff {_number(check.get('max_abs_diff')):.3g} on outputs "
        f"up to {_number(check.get('max_abs_output')):.3g}, "
        + ("within tolerance" if check.get("within_tolerance") else "OUTSIDE tolerance"),
    ]
    parts = []
    for size, entry in ((report.get("speed") or {}).get("batches") or {}).items():
        if "speedup" in entry:
            parts.append(f"batch {size} {entry['speedup']}x ({entry['original_ms']:.3g} → "
                         f"{entry['compiled_ms']:.3g} ms)")
    lines.append("speed: " + ("; ".join(parts) if parts else "not measured"))
    return lines
