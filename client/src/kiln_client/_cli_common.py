"""What every ``kiln`` subcommand shares: exit codes, output helpers, the ``KEY=VALUE`` type."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from kiln_client._jobs import Job

__all__ = ["EXIT_API", "EXIT_CANCELLED", "EXIT_FAILED", "EXIT_OK", "EXIT_TIMEOUT", "EXIT_USAGE",
           "job_json", "label", "print_json", "say"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_API, EXIT_TIMEOUT, EXIT_CANCELLED = 0, 1, 2, 3, 4, 5


def label(text: str) -> tuple[str, str]:
    """Parse a ``--label`` argument: ``key=value`` (or ``key:value``)."""
    key, sep, value = text.partition("=")
    if not sep:
        key, sep, value = text.partition(":")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, value


def say(args: argparse.Namespace, message: str) -> None:
    """Print a message on stderr unless ``--quiet``."""
    if not args.quiet:
        print(message, file=sys.stderr)


def print_json(obj: Any) -> None:
    """Print data as indented JSON on stdout."""
    print(json.dumps(obj, indent=2, default=str))


def job_json(job: Job) -> dict[str, Any]:
    """A job as the JSON object ``--json`` prints."""
    return job.model_dump(mode="json")
