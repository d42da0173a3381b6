"""The engine's connection to Postgres: the pool, its deadlines, and what its failures mean.

Every call has a deadline (``timeout=``). Errors our SQL functions raise with a project SQLSTATE
become :mod:`engine.errors` classes, mapped by code and column, never by message text.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import asyncpg

from engine.db.sqlfiles import queries
from engine.errors import from_sqlstate

QUERY_TIMEOUT_S = 30.0
# What the engine's periodic tasks (maintenance, gauges, settings, the idle vacuum) wait out: the
# database away, or one statement failing. They log it and try again at their next period. The
# result writer waits out a narrower set (engine.delivery.writer), because its failures must not
# be bugs.
PERIODIC_CALL_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)
# A new connection to a Postgres beside us takes milliseconds; one that takes seconds is going to
# a database that is away (a partition answers nothing), and the caller should learn that soon.
CONNECT_TIMEOUT_S = 5.0


@contextmanager
def mapped_errors() -> Iterator[None]:
    """Turn our SQLSTATEs into EngineErrors; let every other database error through unchanged."""
    try:
        yield
    except asyncpg.PostgresError as exc:
        mapped = from_sqlstate(
            exc.sqlstate,
            str(exc.args[0]) if exc.args else str(exc),
            getattr(exc, "column_name", None),
        )
        if mapped is None:
            raise
        raise mapped from exc


class DatabaseUnavailable(ConnectionError):
    """The database server refused a new connection, or closed one under a query.

    A ConnectionError (an OSError) because that is what every part that waits out a lost database
    catches: the result writer, the dispatcher, the periodic tasks, the admin API (503).
    """


@contextmanager
def _closed_under_us(conn: asyncpg.pool.PoolConnectionProxy) -> Iterator[None]:
    """When the server ends a connection under a query (pg_terminate_backend, a restart),
    asyncpg sometimes reports it as InternalClientError ("cannot switch to state ...") instead of
    a connection error; the closed connection tells the two apart."""
    try:
        yield
    except asyncpg.InternalClientError as exc:
        if conn.is_closed():
            raise DatabaseUnavailable("the database closed the connection") from exc
        raise


async def open_engine_pool(
    url: str, size: int, *, connect_timeout_s: float = CONNECT_TIMEOUT_S
) -> asyncpg.Pool:
    """The engine's pool: connections open within a deadline and go back without a round trip.

    asyncpg's default connect deadline is 60 s. In a network partition the result writer's next
    write, reconnecting through the pool, then hung until the acquire's own deadline
    (QUERY_TIMEOUT_S, 30 s) before the writer knew the database was away; the 10 s partition
    fault test failed that way whenever the cut found the writer between two writes.

    asyncpg's default reset sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``
    to the server on every release, a second round trip for each of our one-statement calls: 11 %
    of the engine's samples in bench W2 (py-spy). The engine leaves nothing there to undo: its SQL
    functions scope their settings (SET clauses, ``set_config(..., true)``), the migration runner
    unlocks its advisory lock, the listener LISTENs on a connection of its own, and nothing opens
    a cursor. asyncpg still rolls back a transaction left open, before calling this reset.
    """
    return await asyncpg.create_pool(
        url,
        min_size=2,
        max_size=size,
        command_timeout=60,
        timeout=connect_timeout_s,
        reset=_keep_session,
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to reset; see open_engine_pool."""


class Gateway:
    """Typed calls of ``queries.sql`` through an asyncpg pool owned by the caller.

    Its subclasses group the calls by who makes them (the delivery queue, the admin writes, the
    delivery-log reads); each call has a deadline and maps our SQLSTATEs to EngineErrors.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._q = queries()

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy]:
        try:
            conn = await self.pool.acquire(timeout=QUERY_TIMEOUT_S)
        except asyncpg.PostgresError as exc:
            # Raised while the pool opened a connection, so the server refused it (e.g. too
            # many clients, ALLOW_CONNECTIONS false): the database is away, the query is fine.
            raise DatabaseUnavailable(f"the database refused a connection: {exc}") from exc
        try:
            with _closed_under_us(conn):
                yield conn
        finally:
            try:
                await self.pool.release(conn)
            except asyncpg.InternalClientError as exc:
                # Its reset failed the same way; the pool has already dropped the connection.
                raise DatabaseUnavailable("the database closed the connection") from exc

    async def _fetch(self, name: str, *args: Any) -> list[asyncpg.Record]:
        with mapped_errors():
            async with self._conn() as conn:
                return list(await conn.fetch(self._q[name], *args, timeout=QUERY_TIMEOUT_S))

    async def _fetchval(self, name: str, *args: Any) -> Any:
        with mapped_errors():
            async with self._conn() as conn:
                return await conn.fetchval(self._q[name], *args, timeout=QUERY_TIMEOUT_S)
