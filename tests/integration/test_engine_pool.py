"""The engine's pool hands connections back without asyncpg's reset round trip, safely, and
gives up on a connection the database never answers instead of waiting out asyncpg's 60 s."""

from __future__ import annotations

import asyncio

import asyncpg

from engine.db.pool import QUERY_TIMEOUT_S, open_engine_pool
from tests.support.pgproxy import PgProxy


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
                "INSERT INTO webhooks.event_types (name, description, schema, example)"
                " VALUES ('test.left', 'x', '{}', '{}')"
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


async def test_a_connection_the_database_never_answers_fails_at_the_connect_deadline(
    db_url: str,
) -> None:
    """Regression: in a partition the pool's reconnect hung for asyncpg's 60 s connect deadline
    (capped only by the 30 s acquire deadline), so the result writer learned the database was
    away long after the engine's other parts. Now the connect deadline ends it, and the pool
    connects again once the database answers."""
    async with PgProxy(db_url) as proxy:
        pool = await open_engine_pool(proxy.url, 2, connect_timeout_s=0.5)
        try:
            assert await pool.fetchval("SELECT 1") == 1
            proxy.cut(hold=True)  # drops the pool's connections; new ones get no answer
            failures: list[BaseException | None] = []
            while len(failures) < 3:
                query = asyncio.ensure_future(pool.fetchval("SELECT 1"))
                done, _ = await asyncio.wait([query], timeout=QUERY_TIMEOUT_S)
                assert query in done, "the reconnect hung with no deadline of its own"
                failures.append(query.exception())
                # A connection dropped by the cut fails at once if the pool has not yet seen
                # it close; the next query must open a new one, which gets no answer.
                if not isinstance(failures[-1], asyncpg.ConnectionDoesNotExistError):
                    break
            assert isinstance(failures[-1], TimeoutError), failures
            assert proxy.accepted > 2, "the pool tried a new connection, which the proxy held"
            proxy.restore()
            assert await pool.fetchval("SELECT 1") == 1
        finally:
            proxy.restore()
            await pool.close()
