"""Builds delivery-log states through the engine's own Store calls, without running the engine.

``attempt`` plays the engine's part (claim, then record a result), so every state a test sets up is
one the real functions produce: pending, in flight, retrying, delivered, failed, cancelled.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg

from engine.db.store import Store
from engine.models import Delivery, EndpointOptions, ErrorKind, Outcome, Recorded
from tests.support.db import fan_out


async def emit(
    conn: asyncpg.Connection,
    account_id: str,
    event_type: str = "email.sent",
    payload: Mapping[str, Any] | None = None,
) -> int:
    """Emit an event as the app's trigger would, and fan it out as the engine's next claim would;
    returns its id (something must subscribe)."""
    event_id: int | None = await conn.fetchval(
        "SELECT webhooks.emit($1, $2, $3::jsonb)",
        account_id,
        event_type,
        json.dumps(dict(payload or {"n": 1})),
    )
    assert event_id is not None, f"no endpoint of {account_id} subscribes to {event_type}"
    await fan_out(conn)
    return event_id


async def claim(store: Store, endpoint_id: UUID, count: int) -> list[Delivery]:
    """Lease up to ``count`` due deliveries of one endpoint, oldest first, as the engine would."""
    claimed = await store.claim({endpoint_id: count}, default_room=0, max_rows=count)
    return [delivery for delivery, _ in claimed]


async def attempt(
    store: Store,
    endpoint_id: UUID,
    status: int,
    *,
    count: int = 100,
    excerpt: str | None = "ok",
    duration_ms: int = 25,
) -> list[Recorded]:
    """Claim up to ``count`` due deliveries of an endpoint and record one attempt for each."""
    failed = not 200 <= status <= 299
    outcomes = [
        Outcome(
            delivery_id=d.id,
            lease=d.lease,
            started_at=datetime.now(UTC),
            duration_ms=duration_ms,
            status=status,
            error_kind=(ErrorKind.HTTP_STATUS if status else ErrorKind.CONNECT) if failed else None,
            error_message=(f"HTTP {status}" if status else "connection refused")
            if failed
            else None,
            response_excerpt=excerpt,
        )
        for d in await claim(store, endpoint_id, count)
    ]
    return await store.record(outcomes)


def outcome(delivery: Delivery, status: int, **kw: Any) -> Outcome:
    """The Outcome of one attempt of ``delivery`` that got ``status`` (an HTTP failure unless
    2xx); ``kw`` sets or overrides any other field."""
    if not 200 <= status <= 299:
        kw.setdefault("error_kind", ErrorKind.HTTP_STATUS)
        kw.setdefault("error_message", f"HTTP {status}")
    return Outcome(delivery.id, delivery.lease, datetime.now(UTC), 12, status, **kw)


async def make_due(conn: asyncpg.Connection, delivery_id: int) -> None:
    """Make a waiting retry due, first in line: its time came before any other's."""
    await conn.execute(
        "UPDATE webhooks.deliveries SET due_at = created_at - interval '1 second' WHERE id = $1",
        delivery_id,
    )


@dataclass(frozen=True)
class MixedLog:
    """Endpoints of :func:`mixed_log`: ``a`` (acct_1, every type), ``b`` (acct_1, email.*),
    ``c`` (acct_2, disabled)."""

    a: UUID
    b: UUID
    c: UUID


async def mixed_log(store: Store, conn: asyncpg.Connection) -> MixedLog:
    """Ten deliveries in every status: 3 delivered (b), 1 failed after two attempts, 1 retrying,
    1 in flight and 2 pending (a), 2 cancelled by disabling c. Retries wait an hour."""
    await conn.execute("UPDATE webhooks.settings SET retry_schedule = '{1 hour}', retry_jitter = 0")
    a, _ = await store.create_endpoint("acct_1", "https://a.example.com/hook")
    b, _ = await store.create_endpoint(
        "acct_1", "https://b.example.com/hook", EndpointOptions(event_types=("email.*",))
    )
    c, _ = await store.create_endpoint("acct_2", "https://c.example.com/hook")
    async with conn.transaction():  # one transaction: these share created_at, ids break the tie
        for n in range(3):
            await emit(conn, "acct_1", "email.sent", {"n": n})
    for n in range(2):
        await emit(conn, "acct_1", "contact.created", {"n": n})
        await emit(conn, "acct_2", "email.opened", {"n": n})
    await attempt(store, b, 200)
    retried = await attempt(store, a, 500, count=2)
    await make_due(conn, retried[0].delivery_id)
    await attempt(store, a, 500, count=1)
    await claim(store, a, 1)
    await store.disable_endpoint(c, "paused")
    return MixedLog(a, b, c)
