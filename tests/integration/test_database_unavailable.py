"""Every kind of connection-level failure surfaces from the Store as DatabaseUnavailable, and as
nothing else: a refused connect, a backend terminated under a query, a connection dropped under a
query, and a connect the database never answers (its deadline)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from engine.db.pool import DatabaseUnavailable, open_engine_pool
from engine.db.store import Store
from tests.support.pgproxy import PgProxy

# The backends that wait for a lock the test's own connection holds.
BLOCKED_BY_ME = (
    "SELECT array_agg(pid) FROM pg_stat_activity"
    " WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))"
)


async def _failure(call: Callable[[], Awaitable[object]]) -> DatabaseUnavailable:
    """The DatabaseUnavailable ``call`` raises; any other outcome fails the test."""
    with pytest.raises(Exception) as raised:  # noqa: PT011 - the point is to see which one
        await call()
    assert type(raised.value) is DatabaseUnavailable, repr(raised.value)
    return raised.value


async def _blocked_pid(conn: asyncpg.Connection) -> int:
    """The pid of the one backend waiting for a lock ``conn`` holds, once there is one."""
    while True:
        pids: list[int] | None = await conn.fetchval(BLOCKED_BY_ME)
        if pids:
            (pid,) = pids
            return pid
        await asyncio.sleep(0.01)  # pacing only: the loop ends on the state above


async def _waiting_call(store: Store, conn: asyncpg.Connection) -> asyncio.Future[None]:
    """A Store call that waits on a row lock ``conn`` holds, in a transaction left open (setting
    the waiting mark always writes the row)."""
    await conn.execute("BEGIN")
    await conn.execute("SELECT 1 FROM webhooks.engine_state FOR UPDATE")
    return asyncio.ensure_future(store.set_engine_waiting(True))


@pytest.fixture
async def proxy(db_url: str) -> AsyncIterator[PgProxy]:
    async with PgProxy(db_url) as proxy:
        yield proxy


async def test_a_refused_connect_is_database_unavailable(proxy: PgProxy) -> None:
    """Opening the pool, and a call whose pool must open a new connection, both fail with
    DatabaseUnavailable while connections are refused; the same store works once they are not."""
    pool = await open_engine_pool(proxy.url, 2)
    store = Store(pool)
    try:
        proxy.cut()
        refused = await _failure(lambda: open_engine_pool(proxy.url, 2))
        assert isinstance(refused.__cause__, OSError | asyncpg.PostgresError), refused.__cause__
        while True:  # the first calls may still find a pool connection the cut dropped
            failure = await _failure(store.next_due_at)
            if "refused a connection" in str(failure):
                break
        assert proxy.refused > 0
        proxy.restore()
        assert await store.next_due_at() is None
    finally:
        proxy.restore()
        await pool.close()


async def test_a_backend_terminated_under_a_query_is_database_unavailable(
    db_url: str, conn: asyncpg.Connection
) -> None:
    """pg_terminate_backend on the backend running a Store call (here waiting for a lock) fails
    that call with DatabaseUnavailable, and the next call works on a fresh connection."""
    pool = await open_engine_pool(db_url, 2)
    store = Store(pool)
    try:
        call = await _waiting_call(store, conn)
        pid = await _blocked_pid(conn)
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
        await _failure(lambda: call)
        await conn.execute("ROLLBACK")
        assert await store.next_due_at() is None
    finally:
        await pool.close()


async def test_a_connection_dropped_under_a_query_is_database_unavailable(
    proxy: PgProxy, conn: asyncpg.Connection
) -> None:
    """The network dropping the connection of a Store call in progress (a proxy cut) fails the
    call with DatabaseUnavailable, and the store works again once the network is back."""
    pool = await open_engine_pool(proxy.url, 2)
    store = Store(pool)
    try:
        call = await _waiting_call(store, conn)
        await _blocked_pid(conn)
        proxy.cut()
        await _failure(lambda: call)
        await conn.execute("ROLLBACK")
        proxy.restore()
        assert await store.next_due_at() is None
    finally:
        proxy.restore()
        await pool.close()


async def test_a_connect_never_answered_is_database_unavailable_at_its_deadline(
    proxy: PgProxy,
) -> None:
    """In a partition (the proxy holds new connections unanswered) a call fails with
    DatabaseUnavailable caused by the connect deadline's TimeoutError, not by a hang."""
    pool = await open_engine_pool(proxy.url, 2, connect_timeout_s=0.5)
    store = Store(pool)
    try:
        proxy.cut(hold=True)
        while True:  # the first calls may still find a pool connection the cut dropped
            failure = await _failure(store.next_due_at)
            if isinstance(failure.__cause__, TimeoutError):
                break
        proxy.restore()
        assert await store.next_due_at() is None
    finally:
        proxy.restore()
        await pool.close()
