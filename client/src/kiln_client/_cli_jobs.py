"""``kiln jobs list|show|logs|watch|cancel|download|delete``: the caller's jobs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln_client._cli_common import (
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_OK,
    job_json,
    label,
    print_json,
    say,
)
from kiln_client.events import JobEvent, LogEvent, StageEvent, StatusEvent
from kiln_client.models import JobStatus

if TYPE_CHECKING:
    from kiln_client._client import Client
    from kiln_client._jobs import Job

__all__ = ["add_jobs_commands"]


def add_jobs_commands(sub: Any) -> None:
    """Add ``kiln jobs …`` to the ``kiln`` parser."""
    jobs = sub.add_parser("jobs", help="list and manage jobs").add_subparsers(
        dest="jobs_command", metavar="{list,show,logs,watch,cancel,download,delete}", required=True
    )
    p = jobs.add_parser("list", help="list jobs, newest first")
    p.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    p.add_argument("--label", action="append", type=label, default=[], metavar="KEY=VALUE")
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


def _cmd_list(client: Client, args: argparse.Namespace) -> int:
    jobs: list[Job] = []
    for job in client.jobs.list(status=args.status, label=dict(args.label) or None,
                                target=args.target, name=args.name):
        if args.limit is not None and len(jobs) >= args.limit:
            break
        jobs.append(job)
    if args.json:
        print_json([job_json(j) for j in jobs])
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
    print(json.dumps(job_json(job), indent=2) if args.json else _describe(job))
    return EXIT_OK


def _cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    job = client.jobs.cancel(args.job_id)
    say(args, f"job {job.id}: cancel requested (status {job.status.value})")
    print(json.dumps(job_json(job), indent=2) if args.json else job.id)
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
    say(args, f"written to {path}")
    print(path)
    return EXIT_OK


def _cmd_delete(client: Client, args: argparse.Namespace) -> int:
    client.jobs.delete(args.job_id)
    say(args, f"job {args.job_id} deleted")
    return EXIT_OK
