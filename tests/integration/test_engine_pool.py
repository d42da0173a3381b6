"""The engine's pool hands connections back without asyncpg's reset round trip, safely."""

from __future__ import annotations

import asyncpg

from engine.store import open_engine_pool


async def test_release_sends_no_reset_statement(db_url: str) -> None:
    """asyncpg's default reset (``... RESET ALL``) would put a session setting back between two
    uses of a connection; the engine's pool sends nothing, which saves a round trip per call."""
    pool = await open_engine_pool(db_url, 2)
    try:
        async with pool.acquire() as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            await conn.execute("SET application_name = 'left by the previous user'")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == pid
            assert await conn.fetchval("SHOW application_name") == "left by the previous user"
    finally:
        await pool.close()


async def test_release_still_rolls_back_an_open_transaction(
    db_url: str, conn: asyncpg.Connection
) -> None:
    """What must never leak, an open transaction and its locks, is still undone on release."""
    pool = await open_engine_pool(db_url, 2)
    try:
        async with pool.acquire() as pooled:
            await pooled.execute("BEGIN")
            await pooled.execute(
                "INSERT INTO webhooks.event_types (name, description) VALUES ('test.left', 'x')"
            )
        async with pool.acquire() as pooled:
            assert not pooled.is_in_transaction()
            assert await pooled.fetchval("SELECT txid_current_if_assigned()") is None
        left = await conn.fetchval(
            "SELECT count(*) FROM webhooks.event_types WHERE name = 'test.left'"
        )
        assert left == 0
    finally:
        await pool.close()
