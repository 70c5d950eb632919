"""``kiln cache show|purge``: the caller's compile cache (``GET``/``DELETE /v1/cache``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from kiln_client.models import CacheUsage

if TYPE_CHECKING:
    from kiln_client._client import Client

__all__ = ["add_cache_commands"]

_DESCRIPTION = (
    "A job whose model (its files' names and bytes, however archived), example inputs, flags, "
    "target, signature, placement, input shapes and the workers' toolchain (Kiln, TensorFlow, "
    "backend) match an earlier job of yours ends at once with that job's outcome and the same "
    "stored artifacts: a success, or a failure the model itself causes (invalid model, "
    "unsupported op, bad inputs). Limits, time-outs and crashes are never cached. Opt out per "
    "job with `kiln compile --no-cache`. The cache is yours alone and bounded in size (the "
    "least recently used entries go first).")


def add_cache_commands(sub: Any) -> None:
    """Add ``kiln cache show`` and ``kiln cache purge`` to the ``kiln`` parser."""
    cache = sub.add_parser("cache", help="show or purge your compile cache",
                           description=_DESCRIPTION).add_subparsers(
        dest="cache_command", metavar="{show,purge}", required=True)
    p = cache.add_parser("show", help="how many outcomes your cache holds and their size")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=_cmd_show)
    p = cache.add_parser("purge", help="remove every entry (finished jobs keep their artifacts)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=_cmd_purge)


def _print(usage: CacheUsage, args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps(usage.model_dump(mode="json", exclude_none=True), indent=2))
        return 0
    if usage.purged is not None and not args.quiet:
        print(f"{usage.purged} entries purged", file=sys.stderr)
    bound = f"{usage.max_bytes} bytes" if usage.max_bytes else "off"
    print(f"entries: {usage.entries}\nbytes:   {usage.bytes}\nbound:   {bound}")
    return 0


def _cmd_show(client: Client, args: argparse.Namespace) -> int:
    return _print(client.cache.usage(), args)


def _cmd_purge(client: Client, args: argparse.Namespace) -> int:
    return _print(client.cache.purge(), args)
