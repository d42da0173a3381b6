"""Payload filters (webhooks.endpoints.filter, migration 0007) in emit and emit_many.

An endpoint with a filter receives an event only when ``payload @@ filter`` is true; a filter that
errors on a payload does not match and never fails the app's transaction. The column is set with
UPDATE here: the endpoint functions' argument for it is another change's.
"""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from tests.support.db import fan_out, sql_endpoint

EMIT = "SELECT webhooks.emit($1, $2, $3::jsonb, $4)"
EMIT_MANY = """
SELECT webhooks.emit_many(ARRAY(
    SELECT ROW('acct_1', 'email.bounced', p, NULL)::webhooks.new_event
      FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS a(p, i) ORDER BY i))"""

PAYLOADS: list[dict[str, Any]] = [
    {"bounce_type": "hard", "campaign_id": 42},
    {"bounce_type": "soft", "campaign_id": 42},
    {"bounce_type": "hard", "campaign_id": "42"},
    {"campaign_id": 7},
    {"bounce_type": ["hard"], "n": 0},
    {"n": "text"},
    {},
]
FILTERS = [
    '$.bounce_type == "hard"',
    "$.campaign_id == 42",
    '$.bounce_type == "hard" && $.campaign_id == 42',
    "$.campaign_id > 10",
    "exists($.bounce_type)",
    'strict $.bounce_type == "hard"',  # errors (no such key) on some payloads
    "$.n + 1 == 1",  # errors (text plus number) on one payload
    "1 / $.n == 1",  # errors (division by zero) on one payload
    "$.campaign_id",  # not a predicate: never true
]


async def set_filter(conn: asyncpg.Connection, endpoint_id: UUID, path: str | None) -> None:
    await conn.execute("UPDATE webhooks.endpoints SET filter = $2::jsonpath WHERE id = $1",
                       endpoint_id, path)  # fmt: skip


async def matches(conn: asyncpg.Connection, payload: dict[str, Any], path: str) -> bool:
    """Postgres's own answer: payload @@ filter, NULL (an error or no boolean) being no match."""
    result = await conn.fetchval("SELECT $1::jsonb @@ $2::jsonpath", json.dumps(payload), path)
    return result is True


@pytest.mark.parametrize("path", FILTERS)
async def test_emit_delivers_exactly_the_matching_events(tx: asyncpg.Connection, path: str) -> None:
    """For each payload, the filtered endpoint gets a delivery exactly when payload @@ filter is
    true; an unfiltered endpoint of the same account gets every event; no call fails."""
    filtered = await sql_endpoint(tx, ["email.bounced"])
    unfiltered = await sql_endpoint(tx, ["email.*"])
    await set_filter(tx, filtered, path)
    for payload in PAYLOADS:
        event_id = await tx.fetchval(EMIT, "acct_1", "email.bounced", json.dumps(payload), None)
        assert event_id is not None
        await fan_out(tx)
        got = {
            r["endpoint_id"]
            for r in await tx.fetch(
                "SELECT endpoint_id FROM webhooks.deliveries WHERE event_id = $1", event_id
            )
        }
        expected = {unfiltered} | ({filtered} if await matches(tx, payload, path) else set())
        assert got == expected, payload


@pytest.mark.parametrize("path", FILTERS)
async def test_emit_many_filters_as_emit(tx: asyncpg.Connection, path: str) -> None:
    """emit_many with the same payloads: events stored only where the (only) endpoint's filter
    matches, in order."""
    endpoint_id = await sql_endpoint(tx, ["email.bounced"])
    await set_filter(tx, endpoint_id, path)
    expected = [p for p in PAYLOADS if await matches(tx, p, path)]
    assert await tx.fetchval(EMIT_MANY, json.dumps(PAYLOADS)) == len(expected)
    await fan_out(tx)
    rows = await tx.fetch("SELECT payload FROM webhooks.events ORDER BY id")
    assert [json.loads(r["payload"]) for r in rows] == expected
    assert await tx.fetchval("SELECT count(*) FROM webhooks.deliveries") == len(expected)


async def test_no_matching_filter_writes_nothing(tx: asyncpg.Connection) -> None:
    """When every subscribed endpoint's filter rejects the payload, emit returns NULL and writes
    nothing, its idempotency key included (a later event with that key is stored)."""
    endpoint_id = await sql_endpoint(tx, ["email.bounced"])
    await set_filter(tx, endpoint_id, '$.bounce_type == "hard"')
    soft, hard = json.dumps({"bounce_type": "soft"}), json.dumps({"bounce_type": "hard"})
    assert await tx.fetchval(EMIT, "acct_1", "email.bounced", soft, None) is None
    assert await tx.fetchval(EMIT, "acct_1", "email.bounced", soft, "k") is None
    assert (
        await tx.fetchval(
            "SELECT (SELECT count(*) FROM webhooks.intake)"
            " + (SELECT count(*) FROM webhooks.idempotency_keys)"
        )
        == 0
    )
    assert await tx.fetchval(EMIT, "acct_1", "email.bounced", hard, "k") is not None


async def test_filter_of_an_endpoint_not_subscribed_is_irrelevant(tx: asyncpg.Connection) -> None:
    """A filter on an endpoint that does not take the type neither adds nor removes anything."""
    other = await sql_endpoint(tx, ["contact.*"])
    await set_filter(tx, other, "$.x == 1")
    assert await tx.fetchval(EMIT, "acct_1", "email.bounced", json.dumps({"x": 1}), None) is None
    taker = await sql_endpoint(tx, ["email.bounced"])
    event_id = await tx.fetchval(EMIT, "acct_1", "email.bounced", json.dumps({"x": 1}), None)
    await fan_out(tx)
    rows = await tx.fetch(
        "SELECT endpoint_id FROM webhooks.deliveries WHERE event_id = $1", event_id
    )
    assert [r["endpoint_id"] for r in rows] == [taker]
