"""The intake (migration 0011, sql/functions/35_intake.sql): emit accepts an event as one row in
the app's transaction, and fan_out_v1 (which every claim calls first) turns it into the event and
its deliveries, matching endpoints at that moment."""

from __future__ import annotations

import json

import asyncpg

from tests.support.db import fan_out, sql_endpoint

EMIT = "SELECT webhooks.emit('acct_1', 'email.sent', $1::jsonb, $2)"
FAN_OUT = "SELECT webhooks.fan_out_v1($1)"


async def emit(conn: asyncpg.Connection, n: int, key: str | None = None) -> int:
    event_id: int | None = await conn.fetchval(EMIT, json.dumps({"n": n}), key)
    assert event_id is not None
    return event_id


async def count(conn: asyncpg.Connection, table: str) -> int:
    return int(await conn.fetchval(f"SELECT count(*) FROM webhooks.{table}"))


async def test_an_endpoint_gets_the_events_accepted_from_its_creation_on(
    conn: asyncpg.Connection,
) -> None:
    """An endpoint created in the same transaction as the event (the same instant) gets it; one
    created in a later transaction, before the fan-out, does not."""
    async with conn.transaction():
        same_instant = await sql_endpoint(conn, ["email.sent"])
        event_id = await emit(conn, 1)
    later = await sql_endpoint(conn, ["email.sent"])
    assert await fan_out(conn) == 1
    rows = await conn.fetch(
        "SELECT endpoint_id FROM webhooks.deliveries WHERE event_id = $1", event_id
    )
    assert [r["endpoint_id"] for r in rows] == [same_instant]
    assert later != same_instant


async def test_an_event_no_endpoint_takes_any_more_is_not_stored(conn: asyncpg.Connection) -> None:
    """The only endpoint, disabled between the emit and the fan-out, gets nothing, and the event is
    not stored: every stored event has a delivery. The intake is emptied either way."""
    endpoint = await sql_endpoint(conn, ["email.sent"])
    await emit(conn, 1)
    kept = await emit(conn, 2)
    await conn.execute("SELECT webhooks.disable_endpoint($1)", endpoint)
    assert await fan_out(conn) == 2
    assert (await count(conn, "events"), await count(conn, "deliveries")) == (0, 0)
    assert await count(conn, "intake") == 0
    await conn.execute("SELECT webhooks.enable_endpoint($1)", endpoint)
    again = await emit(conn, 3)
    assert await fan_out(conn) == 1
    assert [r["id"] for r in await conn.fetch("SELECT id FROM webhooks.events")] == [again]
    assert kept < again


async def test_the_oldest_go_first_and_no_more_than_the_limit(conn: asyncpg.Connection) -> None:
    """fan_out_v1(2) of three accepted events takes the two oldest; the next call the third."""
    await sql_endpoint(conn, ["email.sent"])
    ids = [await emit(conn, n) for n in range(3)]
    assert await conn.fetchval(FAN_OUT, 2) == 2
    assert [r["id"] for r in await conn.fetch("SELECT id FROM webhooks.intake")] == ids[2:]
    assert [r["id"] for r in await conn.fetch("SELECT id FROM webhooks.events ORDER BY id")] == (
        ids[:2]
    )
    assert await conn.fetchval(FAN_OUT, 2) == 1
    assert await conn.fetchval(FAN_OUT, 2) == 0


async def test_keyed_and_other_events_keep_their_order(conn: asyncpg.Connection) -> None:
    """Events with and without an idempotency key go through the intake alike, so an endpoint's
    deliveries follow the order the events were accepted in (strict ordering relies on it), and a
    repeated key still returns the first event, before and after its fan-out."""
    await sql_endpoint(conn, ["email.sent"])
    first = await emit(conn, 1)
    keyed = await emit(conn, 2, key="k")
    assert await emit(conn, 9, key="k") == keyed
    last = await emit(conn, 3)
    await fan_out(conn)
    assert await emit(conn, 9, key="k") == keyed
    rows = await conn.fetch("SELECT event_id FROM webhooks.deliveries ORDER BY id")
    assert [r["event_id"] for r in rows] == [first, keyed, last]
    assert await count(conn, "intake") == 0


async def test_one_fan_out_at_a_time(db_url: str, conn: asyncpg.Connection) -> None:
    """While one transaction fans out, another's fan-out takes nothing (it does not wait): the
    deliveries are written in the events' order. Once the first commits, the rest goes."""
    await sql_endpoint(conn, ["email.sent"])
    ids = [await emit(conn, n) for n in range(2)]
    other = await asyncpg.connect(db_url)
    try:
        async with conn.transaction():
            assert await conn.fetchval(FAN_OUT, 1) == 1
            assert await other.fetchval(FAN_OUT, 10) == 0
        assert await other.fetchval(FAN_OUT, 10) == 1
    finally:
        await other.close()
    rows = await conn.fetch("SELECT event_id FROM webhooks.deliveries ORDER BY id")
    assert [r["event_id"] for r in rows] == ids


async def test_an_accepted_event_is_due_for_the_engine_at_once(conn: asyncpg.Connection) -> None:
    """next_due_at_v1 (the engine's timer) reports an event waiting in the intake as due since it
    was accepted, so an engine that just went to sleep claims, and so fans it out."""
    await sql_endpoint(conn, ["email.sent"])
    assert await conn.fetchval("SELECT webhooks.next_due_at_v1()") is None
    async with conn.transaction():
        await emit(conn, 1)
        accepted_at = await conn.fetchval("SELECT now()")
    assert await conn.fetchval("SELECT webhooks.next_due_at_v1()") == accepted_at
    await fan_out(conn)
    due = await conn.fetchrow("SELECT due_at, created_at FROM webhooks.deliveries")
    assert due is not None
    assert (due["due_at"], due["created_at"]) == (accepted_at, accepted_at)
    assert await conn.fetchval("SELECT webhooks.next_due_at_v1()") == accepted_at


async def test_accepted_events_counts_one_account_or_all_until_fanned_out(
    conn: asyncpg.Connection,
) -> None:
    """accepted_events_v1 counts the intake's rows of one account (or of all with NULL) and the
    oldest's acceptance time; fanned out, they are no longer counted."""
    await sql_endpoint(conn, ["email.sent"])
    await sql_endpoint(conn, ["email.sent"], account_id="acct_2")
    async with conn.transaction():
        await emit(conn, 1)
        first_accepted = await conn.fetchval("SELECT now()")
    await emit(conn, 2)
    await conn.execute("SELECT webhooks.emit('acct_2', 'email.sent', '{}')")
    counted = "SELECT (events, oldest_accepted_at) FROM webhooks.accepted_events_v1($1)"
    assert (await conn.fetchval(counted, "acct_1")) == (2, first_accepted)
    assert (await conn.fetchval(counted, None)) == (3, first_accepted)
    assert (await conn.fetchval(counted, "acct_none")) == (0, None)
    assert await fan_out(conn) == 3
    assert (await conn.fetchval(counted, None)) == (0, None)
