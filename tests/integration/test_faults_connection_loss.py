"""How Store calls fail when the server drops or refuses their connection: always as the one
error that the result writer and the dispatcher wait out (DatabaseUnavailable)."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import asyncpg
import pytest

from engine.db.pool import DatabaseUnavailable
from engine.db.store import Store

TRIES = 40
KILL_OTHERS = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
)


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    """A Store on a one-connection pool, so every call reuses the connection the test kills."""
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=1)
    try:
        yield Store(pool)
    finally:
        pool.terminate()


async def test_a_connection_killed_under_a_call_fails_as_a_connection_error(
    store: Store, conn: asyncpg.Connection
) -> None:
    """Regression: asyncpg sometimes reports a connection the server just closed as
    InternalClientError, which escaped Store calls and stopped the engine; every such failure is
    now a connection error, and the next call works on a fresh connection."""
    seen: Counter[str] = Counter()
    for _ in range(TRIES):
        await conn.execute(KILL_OTHERS)
        try:
            await store.next_due_at()
        except DatabaseUnavailable as exc:
            seen[type(exc).__name__] += 1
        else:
            seen["ok"] += 1  # the kill had not landed yet, or the pool reconnected first
    print(dict(seen))
    assert await store.next_due_at() is None


async def test_a_refused_connection_is_database_unavailable(
    store: Store, conn: asyncpg.Connection, pg_server_url: str
) -> None:
    """Regression: a server refusing new connections (here ALLOW_CONNECTIONS false) raised a
    Postgres error from the pool that stopped the engine; it is DatabaseUnavailable now."""
    database = await conn.fetchval("SELECT current_database()")
    admin = await asyncpg.connect(pg_server_url)
    try:
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        try:
            await conn.execute(KILL_OTHERS)
            with pytest.raises(DatabaseUnavailable):
                await store.next_due_at()  # may first find its connection dead
            with pytest.raises(DatabaseUnavailable, match="not currently accepting connections"):
                await store.next_due_at()
        finally:
            await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
    finally:
        await admin.close()
    assert await store.next_due_at() is None
