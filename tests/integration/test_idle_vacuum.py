"""The idle vacuum's answers from Postgres: a table another vacuum holds is skipped and tried
again; a role that may not vacuum the table is told once and the engine stops trying."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest
import structlog.testing

from engine.db.pool import open_engine_pool
from engine.db.store import Store
from engine.delivery.idle_vacuum import LOCK_NOT_AVAILABLE, IdleVacuum
from tests.support.db import fan_out, with_user
from tests.support.engines import create_endpoint, wait_until


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    pool = await open_engine_pool(db_url, 2)
    try:
        yield Store(pool)
    finally:
        await pool.close()


async def _dead_rows(conn: asyncpg.Connection, store: Store, n: int) -> None:
    """Leave at least ``n`` dead rows in the hot table, as delivered deliveries do."""
    await create_endpoint(conn, "https://example.com/hook")
    await conn.execute(
        "SELECT webhooks.emit('acct_1', 'email.sent', jsonb_build_object('i', g))"
        " FROM generate_series(1, $1::integer) g",
        n,
    )
    await fan_out(conn)
    await conn.execute("DELETE FROM webhooks.deliveries")
    # An idle session reports its counts up to 10 s late unless told otherwise (PG15+).
    await conn.execute("SELECT pg_stat_force_next_flush()")

    async def counted() -> bool:
        return await store.hot_table_dead_rows() >= n

    await wait_until(counted, what=f"{n} dead rows in the statistics")


async def test_vacuum_of_a_locked_table_is_skipped_then_done_at_the_next_check(
    db_url: str, conn: asyncpg.Connection, store: Store
) -> None:
    """Another vacuum's lock (here an explicit one of the same mode) makes SKIP_LOCKED skip the
    table with 55P03: the engine waits for the next check rather than queue behind it."""
    await _dead_rows(conn, store, 50)
    holder = await asyncpg.connect(db_url)
    stop = asyncio.Event()
    vacuum = IdleVacuum(store, dead_rows=10, check_s=0.05)
    try:
        async with holder.transaction():
            await holder.execute("LOCK TABLE webhooks.deliveries IN SHARE UPDATE EXCLUSIVE MODE")
            warnings = await store.vacuum_hot_table()
            assert [w.sqlstate for w in warnings] == [LOCK_NOT_AVAILABLE], warnings
            with structlog.testing.capture_logs() as logged:
                task = asyncio.ensure_future(vacuum.run(stop))
                vacuum.engine_idle()

                async def skipped() -> bool:
                    return any(e["event"] == "hot_table_vacuum_skipped" for e in logged)

                await wait_until(skipped, what="a skipped vacuum")
        assert vacuum.vacuums == 0
        vacuum.engine_idle()

        async def vacuumed() -> bool:
            return vacuum.vacuums == 1

        await wait_until(vacuumed, what="the vacuum once the lock is gone")
        assert not task.done()
    finally:
        stop.set()
        await holder.close()
    await asyncio.wait_for(task, timeout=30)


async def test_vacuum_the_role_may_not_run_is_reported_once_and_not_retried(
    db_url: str, conn: asyncpg.Connection, store: Store
) -> None:
    """Postgres does not fail a VACUUM of a table the role does not own: it warns and skips it.
    The engine reports that once, with Postgres's words, and leaves the table to autovacuum."""
    await _dead_rows(conn, store, 50)
    role = f"misar_not_owner_{os.getpid()}_{secrets.token_hex(3)}"
    await conn.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        await conn.execute(f'GRANT USAGE ON SCHEMA webhooks TO "{role}"')
        pool = await open_engine_pool(with_user(db_url, role), 2)
        try:
            not_owner = Store(pool)
            warnings = await not_owner.vacuum_hot_table()
            assert warnings, "a VACUUM the role may not run gave no warning"
            assert all(w.sqlstate != LOCK_NOT_AVAILABLE for w in warnings), warnings
            vacuum = IdleVacuum(not_owner, dead_rows=10, check_s=0.05)
            stop = asyncio.Event()
            with structlog.testing.capture_logs() as logged:
                vacuum.engine_idle()
                await asyncio.wait_for(vacuum.run(stop), timeout=30)  # returns: gave up
                assert not stop.is_set()
            refused = [e for e in logged if e["event"] == "hot_table_vacuum_refused"]
            assert len(refused) == 1, logged
            assert "deliveries" in refused[0]["message"], refused
            assert vacuum.vacuums == 0
        finally:
            await pool.close()
    finally:
        await conn.execute(f'DROP OWNED BY "{role}"')
        await conn.execute(f'DROP ROLE "{role}"')
