"""The waiting mark on a real Postgres: emit NOTIFYs only while an engine's mark has not expired.

``engine_state.waiting_until`` is set by ``set_engine_waiting_v1(true)`` for the mark's lifetime
(``engine_waiting_ttl_v1()``), moved forward by ``refresh_engine_waiting_v1()`` while it stands,
and cleared by a claim that leases rows or by ``set_engine_waiting_v1(false)``. Expiry is put in
the past with SQL rather than waited for.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest

from engine.db.store import Store
from engine.delivery.dispatcher import WAITING_REFRESH_S
from tests.support.db import Listener, listening, sql_endpoint

MARK = "SELECT waiting_until, updated_at FROM webhooks.engine_state"
CLAIM = "SELECT * FROM webhooks.claim_v2('{}'::uuid[], '{}'::integer[], 8, 100)"
# The requirement the lifetime serves (DESIGN §3): an engine that died asleep stops costing the
# app NOTIFYs within this.
DEAD_ENGINE_BOUND = timedelta(seconds=30)


@pytest.fixture
async def wakeups(db_url: str) -> AsyncIterator[Listener]:
    """A listener on webhooks_wakeup, on its own connection as the engine's is."""
    async with listening(db_url) as listener:
        yield listener


async def emit(conn: asyncpg.Connection) -> int | None:
    event_id: int | None = await conn.fetchval(
        "SELECT webhooks.emit('acct_1', 'email.sent', $1::jsonb)", json.dumps({"m": 1})
    )
    return event_id


async def set_mark(conn: asyncpg.Connection, offset: str) -> None:
    """Put the mark's expiry ``offset`` (an interval) from now, as if set that long ago."""
    await conn.execute(
        "UPDATE webhooks.engine_state SET waiting_until = now() + $1::text::interval", offset
    )


async def ttl(conn: asyncpg.Connection) -> timedelta:
    value: timedelta = await conn.fetchval("SELECT webhooks.engine_waiting_ttl_v1()")
    return value


async def test_a_fresh_database_asks_for_no_notify(
    conn: asyncpg.Connection, wakeups: Listener
) -> None:
    """With no engine ever started there is no mark, so emit sends no NOTIFY."""
    await sql_endpoint(conn, ["email.sent"])
    assert await conn.fetchval(MARK) is None
    assert await emit(conn) is not None
    assert await wakeups.drain() == []


@pytest.mark.parametrize(("offset", "notified"), [("1 minute", True), ("-1 second", False)])
async def test_emit_notifies_only_before_the_mark_expires(
    conn: asyncpg.Connection, wakeups: Listener, offset: str, notified: bool
) -> None:
    """emit sends one empty NOTIFY on webhooks_wakeup while the mark's expiry is ahead, and none
    once it has passed (an engine that died asleep)."""
    await sql_endpoint(conn, ["email.sent"])
    await set_mark(conn, offset)
    await emit(conn)
    await emit(conn)
    assert await wakeups.drain() == (["", ""] if notified else [])
    assert await conn.fetchval("SELECT count(*) FROM webhooks.intake") == 2


async def test_set_waiting_marks_for_the_lifetime_and_false_clears(
    conn: asyncpg.Connection, wakeups: Listener
) -> None:
    """set_engine_waiting_v1(true) sets the expiry one lifetime ahead; false clears it, and emit
    stops notifying."""
    await sql_endpoint(conn, ["email.sent"])
    async with conn.transaction():
        await conn.execute("SELECT webhooks.set_engine_waiting_v1(true)")
        until, now = await conn.fetchval(MARK), await conn.fetchval("SELECT now()")
    assert until == now + await ttl(conn)
    await emit(conn)
    await conn.execute("SELECT webhooks.set_engine_waiting_v1(false)")
    assert await conn.fetchval(MARK) is None
    await emit(conn)
    assert await wakeups.drain() == [""]


async def test_clearing_writes_only_on_change(conn: asyncpg.Connection) -> None:
    """set_engine_waiting_v1(false) leaves a cleared row untouched, so a busy engine never churns
    it; a mark it clears is written."""
    await conn.execute("SELECT webhooks.set_engine_waiting_v1(false)")
    cleared = await conn.fetchrow(MARK)
    await conn.execute("SELECT webhooks.set_engine_waiting_v1(false)")
    assert await conn.fetchrow(MARK) == cleared
    await set_mark(conn, "1 minute")
    await conn.execute("SELECT webhooks.set_engine_waiting_v1(false)")
    row = await conn.fetchrow(MARK)
    assert row is not None
    assert cleared is not None
    assert row["waiting_until"] is None
    assert row["updated_at"] > cleared["updated_at"]


@pytest.mark.parametrize("offset", ["5 seconds", "-1 second"])
async def test_refresh_extends_a_standing_mark(conn: asyncpg.Connection, offset: str) -> None:
    """refresh_engine_waiting_v1 moves a standing mark one lifetime ahead, whether or not it has
    expired (a live engine whose refresh came late)."""
    await set_mark(conn, offset)
    async with conn.transaction():
        await conn.execute("SELECT webhooks.refresh_engine_waiting_v1()")
        until, now = await conn.fetchval(MARK), await conn.fetchval("SELECT now()")
    assert until == now + await ttl(conn)


async def test_refresh_leaves_a_cleared_mark_cleared(conn: asyncpg.Connection) -> None:
    """After a claim (another engine, busy) cleared the mark, a sleeping engine's refresh does
    not set it again."""
    await conn.execute("SELECT webhooks.set_engine_waiting_v1(true)")
    await sql_endpoint(conn, ["email.sent"])
    await emit(conn)
    claimed = await conn.fetch(CLAIM)
    assert len(claimed) == 1
    assert await conn.fetchval(MARK) is None
    await conn.execute("SELECT webhooks.refresh_engine_waiting_v1()")
    assert await conn.fetchval(MARK) is None


async def test_a_claim_that_finds_nothing_leaves_the_mark(conn: asyncpg.Connection) -> None:
    """A claim clears the mark only when it leases rows: an idle engine's poll keeps its mark."""
    await conn.execute("SELECT webhooks.set_engine_waiting_v1(true)")
    before = await conn.fetchval(MARK)
    assert await conn.fetch(CLAIM) == []
    assert await conn.fetchval(MARK) == before


async def test_the_refresh_period_is_well_inside_the_lifetime(conn: asyncpg.Connection) -> None:
    """The engine refreshes at least three times per lifetime of the mark, and the lifetime keeps
    a dead engine's NOTIFYs within the bound DESIGN §3 sets."""
    lifetime = await ttl(conn)
    assert timedelta(seconds=3 * WAITING_REFRESH_S) <= lifetime <= DEAD_ENGINE_BOUND


async def test_the_store_sets_refreshes_and_clears_the_mark(
    conn: asyncpg.Connection, store: Store
) -> None:
    """DeliveryQueue's calls reach the SQL functions: set, refresh (moves the expiry), clear."""
    await store.set_engine_waiting(True)
    first = await conn.fetchval(MARK)
    assert first is not None
    await store.refresh_engine_waiting()
    assert await conn.fetchval(MARK) > first
    await store.set_engine_waiting(False)
    assert await conn.fetchval(MARK) is None


async def highest_line_pointer(conn: asyncpg.Connection, refreshes: int) -> int:
    """The highest line pointer the mark's row takes over ``refreshes`` refreshes of a standing
    mark, each its own transaction and each followed by a read of the row, as emit reads it."""
    await set_mark(conn, "1 minute")
    highest = 0
    for _ in range(refreshes):
        await conn.execute("SELECT webhooks.refresh_engine_waiting_v1()")
        ctid: str = await conn.fetchval("SELECT ctid::text FROM webhooks.engine_state")
        highest = max(highest, int(ctid.strip("()").split(",")[1]))
    return highest


async def test_the_marks_page_is_pruned_after_a_few_versions(conn: asyncpg.Connection) -> None:
    """A sleeping engine rewrites the mark every few seconds, and emit reads it whenever it stores
    an event. The updates are HOT, so their dead versions stay on the row's page until a reader
    prunes it. With the page's fillfactor at 10 (migration 0013) that happens once a tenth of it
    is used, so over 300 refreshes the row never goes past line pointer 40. At the default
    fillfactor (set here, then set back) the row passes line pointer 100 before the first prune,
    and every read until then walks all those versions."""
    assert await highest_line_pointer(conn, 300) <= 40
    await conn.execute("ALTER TABLE webhooks.engine_state SET (fillfactor = 100)")
    try:
        assert await highest_line_pointer(conn, 300) > 100
    finally:
        await conn.execute("ALTER TABLE webhooks.engine_state SET (fillfactor = 10)")
