"""``kiln-service keys create|revoke|list``: manage API keys in the job store.

The job store is the one of ``KILN_DATABASE_URL`` (default: the SQLite file under
``KILN_DATA_DIR``, or ``--data-dir``). Only ``create`` ever shows a full key, once, last on its
line so that scripts can take it with ``awk '{print $NF}'``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kiln_service.config import Settings, get_settings
from kiln_service.stores._keys import ApiKeyInfo
from kiln_service.stores.jobs import JobStore

__all__ = ["add_keys_parser", "run_keys", "write_key_file"]


def add_keys_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``keys`` command and its sub-commands to ``sub``.

    Args:
        sub: The sub-parsers of ``kiln-service``.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=Path, default=None,
                        help="data folder of the embedded job store (default KILN_DATA_DIR or ./.kiln)")
    keys = sub.add_parser("keys", help="create, revoke or list API keys")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", parents=[common],
                                help="create a key for a tenant and print it (once)")
    create.add_argument("--tenant", required=True, help="tenant the key acts for")
    create.add_argument("--name", default=None, help="a label to recognise the key by")
    revoke = actions.add_parser("revoke", parents=[common], help="revoke a key by its id or prefix")
    revoke.add_argument("key", metavar="KEY_ID_OR_PREFIX")
    listing = actions.add_parser("list", parents=[common], help="list keys (never their value)")
    listing.add_argument("--tenant", default=None, help="only this tenant's keys")


def _store(data_dir: Path | None) -> JobStore:
    from kiln_service.main import prepare_database

    if data_dir is not None:
        os.environ["KILN_DATA_DIR"] = str(data_dir)
        get_settings.cache_clear()
    settings: Settings = get_settings()
    prepare_database(settings)
    return JobStore(settings.resolved_database_url)


def _line(info: ApiKeyInfo) -> str:
    state = f"revoked {info.revoked_at:%Y-%m-%d %H:%M}" if info.revoked_at else "active"
    used = f"{info.last_used_at:%Y-%m-%d %H:%M}" if info.last_used_at else "never"
    return (f"{info.id}  {info.prefix}…  {info.tenant:<16} {state:<24} "
            f"created {info.created_at:%Y-%m-%d %H:%M}  last used {used}  {info.name or ''}").rstrip()


def run_keys(args: argparse.Namespace) -> int:
    """Run one ``keys`` sub-command.

    Args:
        args: The parsed arguments.

    Returns:
        The exit status (0, or 2 when a key to revoke is not found).

    Raises:
        StoreError: The job store is unavailable.
        DatabaseNotMigratedError: The database needs ``kiln-service migrate``.
    """
    from kiln_service.errors import KilnServiceError

    store = _store(args.data_dir)
    try:
        if args.keys_command == "create":
            new = store.create_api_key(tenant=args.tenant, name=args.name)
            print(f"created key {new.info.prefix}… for tenant {new.info.tenant} "
                  f"(id {new.info.id}); it is shown only now: {new.key}")
        elif args.keys_command == "revoke":
            info = store.revoke_api_key(key_id_or_prefix=args.key)
            print(f"revoked key {info.prefix}… of tenant {info.tenant} (id {info.id})")
        else:
            keys = store.list_api_keys(tenant=args.tenant)
            for info in keys:
                print(_line(info))
            if not keys:
                print("no API keys; create one with `kiln-service keys create --tenant NAME`")
    except KilnServiceError as exc:
        if exc.status_code >= 500:
            raise
        print(f"kiln-service keys {args.keys_command}: {exc.detail}", file=sys.stderr)
        return 2
    finally:
        store.dispose()
    return 0


def write_key_file(path: Path, key: str) -> None:
    """Write ``key`` to ``path``, readable by its owner only (mode 0600), replacing the file.

    Args:
        path: Where to write.
        key: The API key.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    # Created with 0600 from the start: no window where another user could read it.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(key + "\n")
