"""``kiln``: the command line over the SDK.

Data goes to stdout (ids, paths, tables, ``--json`` objects), messages to stderr. A known error is
one line on stderr; ``KILN_DEBUG=1`` adds the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from kiln_client import __version__
from kiln_client._cli_cache import add_cache_commands
from kiln_client._cli_common import (
    EXIT_API,
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
)
from kiln_client._cli_compile import add_compile_command
from kiln_client._cli_compile import summary_lines as summary_lines
from kiln_client._cli_jobs import add_jobs_commands
from kiln_client._cli_verify import add_verify_command
from kiln_client._client import Client
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
from kiln_client.flags import FlagsError

# The subcommands live in _cli_compile, _cli_jobs, _cli_cache and _cli_verify; the exit codes
# (and summary_lines) are re-exported here, where callers have always found them.
__all__ = ["EXIT_API", "EXIT_CANCELLED", "EXIT_FAILED", "EXIT_OK", "EXIT_TIMEOUT", "EXIT_USAGE", "main"]

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


def build_parser() -> argparse.ArgumentParser:
    """The ``kiln`` argument parser (exposed for tests and docs)."""
    # argparse exits with 2 on usage errors, which is our documented code for them too.
    parser = argparse.ArgumentParser(prog="kiln", description="Compile TensorFlow models with a Kiln service.",
                     epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="service URL (default: $KILN_URL)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars or messages")
    parser.add_argument("--version", action="version", version=f"kiln {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{compile,jobs,cache,verify}",
                                required=True)
    add_compile_command(sub)
    add_jobs_commands(sub)
    add_cache_commands(sub)
    add_verify_command(sub)
    return parser


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
