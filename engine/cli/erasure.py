"""``misar-webhooks erase`` and ``misar-webhooks retention``: a recipient's erasure and an
account's own retention. Kept apart from :mod:`engine.cli.commands` (one concern, and a module
other commands' changes do not touch).

The address is never printed or logged: the output names the account and the counts, as the
``webhooks.erasures`` row does. ``--email -`` reads it from standard input, which keeps it out of
the shell's history and the process list.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from engine.cli.args import duration
from engine.cli.commands import Command
from engine.db.read_models import jsonable
from engine.db.store import Store
from engine.errors import InvalidInput

Register = Callable[[Any, str, Command, str], argparse.ArgumentParser]


def add_commands(sub: Any, command: Register) -> None:
    """Add ``erase`` and ``retention`` to the top-level subcommands through main's ``command``."""
    p = command(sub, "erase", erase, "redact a recipient's email address from an account's data")
    p.add_argument("--account", required=True, help="the MisarMail account")
    p.add_argument(
        "--email", required=True, help="the address to redact; '-' reads it from standard input"
    )
    p = command(sub, "retention", retention, "keep an account's history shorter than the global")
    p.add_argument("--account", required=True, help="the MisarMail account")
    keep = p.add_mutually_exclusive_group(required=True)
    keep.add_argument("--keep", type=duration, metavar="DURATION", help="like 7d, 36h")
    keep.add_argument(
        "--global", dest="follow_global", action="store_true", help="follow the global retention"
    )


async def erase(store: Store, args: argparse.Namespace) -> int:
    email = sys.stdin.readline().strip() if args.email == "-" else args.email
    if not email:
        raise InvalidInput("--email: no address given", field="email")
    record = await store.erase_recipient(args.account, email)
    if args.json:
        print(json.dumps(jsonable(record), indent=2, ensure_ascii=False))
        return 0
    print(
        f"erasure {record.id} in account {record.account_id}: {record.events} events,"
        f" {record.deliveries} live deliveries, {record.attempts} attempts,"
        f" {record.outcomes} ended deliveries, {record.idempotency_keys} idempotency keys changed"
    )
    return 0


async def retention(store: Store, args: argparse.Namespace) -> int:
    keep = None if args.follow_global else args.keep
    await store.set_account_retention(args.account, keep)
    what = "the global retention" if keep is None else _human(keep)
    if args.json:
        print(json.dumps({"account_id": args.account, "retention_s": _seconds(keep)}))
        return 0
    print(f"account {args.account} keeps its history for {what}")
    return 0


def _human(keep: timedelta) -> str:
    if keep.seconds == keep.microseconds == 0:
        return f"{keep.days}d"
    return f"{keep.total_seconds() / 3600:g}h"


def _seconds(keep: timedelta | None) -> float | None:
    return None if keep is None else keep.total_seconds()
