"""The CLI's customer-side commands: ``portal-access``, ``endpoints test``, ``event-types``.

``portal-access`` signs a token with WEBHOOKS_PORTAL_KEY on this machine (no database, no running
engine: the token is verified by the key alone); the others run in
:func:`engine.cli.commands.session` like every database command.
"""

from __future__ import annotations

import argparse
import json

from engine.cli import render as tables
from engine.cli.commands import _print_json
from engine.config import Settings
from engine.db.store import Store
from engine.errors import ConfigError
from engine.portal_tokens import mint, portal_url


def portal_access(args: argparse.Namespace, settings: Settings) -> int:
    """Print a portal URL (and its token) for one account."""
    if settings.portal_key is None:
        raise ConfigError(
            "portal access is off: set WEBHOOKS_PORTAL_KEY (32+ characters, the engine's key) "
            "to mint portal tokens",
            field="portal_key",
        )
    token = mint(settings.portal_key, args.account, args.ttl)
    base = settings.public_url or f"http://{settings.admin_host}:{settings.admin_port}"
    url = portal_url(base, token.token)
    if args.json:
        return _print_json({"token": token.token, "url": url, "expires_at": token.expires_at})
    print(url)
    print(f"valid until {tables.when(token.expires_at)} for account {token.account_id}")
    return 0


async def endpoints_test(store: Store, args: argparse.Namespace) -> int:
    delivery_id = await store.send_test(args.endpoint, args.event)
    if args.json:
        return _print_json({"delivery_id": delivery_id})
    print(
        f"queued test delivery {delivery_id} ({args.event}, the catalogue's example)\n"
        f"  misar-webhooks deliveries show {delivery_id}   shows its attempts"
    )
    return 0


async def event_types(store: Store, args: argparse.Namespace) -> int:
    types = await store.list_event_types()
    if args.json:
        return _print_json(types)
    rows = [[t.name + (" (operational)" if t.operational else ""), t.description] for t in types]
    print(tables.table(["event type", "description"], rows, width=100))
    if args.examples:
        for t in types:
            print(f"\n{t.name} example data:\n{json.dumps(t.example, indent=2)}")
    return 0
