"""The engine's connection to Postgres: the pool, its deadlines, and what its failures mean.

Every call has a deadline (``timeout=``). Errors our SQL functions raise with a project SQLSTATE
become :mod:`engine.errors` classes, mapped by code and column, never by message text. Every
connection-level failure becomes :class:`DatabaseUnavailable`, here and only here: the rest of the
engine catches that one class and never names an asyncpg error.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from engine.db.migrate import Connection, check_current
from engine.db.sqlfiles import queries
from engine.errors import SchemaOutdated, StoreError, from_sqlstate

QUERY_TIMEOUT_S = 30.0
# A new connection to a Postgres beside us takes milliseconds; one that takes seconds is going to
# a database that is away (a partition answers nothing), and the caller should learn that soon.
# Every connection the package opens (the pool's, the listener's, the CLI's) waits this long.
CONNECT_TIMEOUT_S = 5.0


class DatabaseUnavailable(StoreError):
    """The database cannot answer now; the same call made later can succeed.

    Raised by engine.db only, for every connection-level failure: a connect refused or failed
    (OSError, or any error of the server while it opens a connection: too many clients,
    ALLOW_CONNECTIONS false, starting up), a connection closed under a query (class 08, the
    server's 57P0x shutdowns and terminations, and asyncpg's InterfaceError or
    InternalClientError on a closed connection), a server short of resources (class 53), a
    statement ended by an operator or the server (class 57), and the deadlines of acquire and of
    queries. A query past its deadline is the database not answering (a partition, a stalled
    server): the caller cannot tell that from a database that is away, and reacts the same way,
    so a TimeoutError is this error too.

    Every part waits it out: the result writer keeps its outcomes and retries, the dispatcher
    and the periodic tasks try again at their next period, the listener reconnects, the admin
    API answers 503, /readyz reports the database, the CLI exits 1 with one line.
    """


class LostConflict(DatabaseUnavailable):
    """The database ended this call's transaction to let a concurrent one through.

    A deadlock victim (40P01) or a serialization failure (40001), typically against an operator's
    action on the same endpoint: nothing is wrong with the call, and made again it succeeds. A
    subclass, not a sibling, because every part that waits out an outage must wait this out the
    same way (the result writer above all, which must not lose a batch to a conflict), and a
    sibling would put the pair back into every except clause.
    """


# Failures of the connection, of the server's session, or of the server's resources: never of the
# statement itself. OSError includes TimeoutError (the deadlines, see DatabaseUnavailable).
_CONNECTION_LEVEL = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
)
_CONFLICTS = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)


@contextmanager
def unavailable_when_disconnected(conn: Connection) -> Iterator[None]:
    """Raise the connection-level failures of calls on ``conn`` as DatabaseUnavailable.

    When the server ends a connection under a query (pg_terminate_backend, a restart), asyncpg
    sometimes reports it as InternalClientError ("cannot switch to state ...") or InterfaceError
    ("connection is closed") instead of a connection error; the closed connection tells them
    from a misuse of an open one, which is a bug and propagates.
    """
    try:
        yield
    except _CONFLICTS as exc:
        raise LostConflict(f"{type(exc).__name__}: {exc}") from exc
    except _CONNECTION_LEVEL as exc:
        raise DatabaseUnavailable(f"{type(exc).__name__}: {exc}") from exc
    except (asyncpg.InterfaceError, asyncpg.InternalClientError) as exc:
        if not conn.is_closed():
            raise
        raise DatabaseUnavailable(f"the database closed the connection: {exc}") from exc


@contextmanager
def unavailable_when_refused() -> Iterator[None]:
    """Raise a failure to open a connection as DatabaseUnavailable.

    Any error of the server while it opens a connection is a refusal (too many clients,
    ALLOW_CONNECTIONS false, starting up, a role it does not know): the database is away for
    us, the query is fine. A URL asyncpg cannot parse (ClientConfigurationError) is not.
    """
    try:
        yield
    except (OSError, asyncpg.PostgresError) as exc:
        raise DatabaseUnavailable(
            f"the database refused a connection: {type(exc).__name__}: {exc}"
        ) from exc


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


async def connect(url: str) -> asyncpg.Connection:
    """One connection of its own (the listener's, the CLI's migrate), opened within
    CONNECT_TIMEOUT_S; DatabaseUnavailable when it cannot be."""
    with unavailable_when_refused():
        return await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_S)


async def open_engine_pool(
    url: str, size: int, *, connect_timeout_s: float = CONNECT_TIMEOUT_S
) -> asyncpg.Pool:
    """The engine's pool: connections open within a deadline and go back without a round trip.

    asyncpg's default connect deadline is longer than the acquire's own (QUERY_TIMEOUT_S). In a
    network partition the result writer's next write, reconnecting through the pool, then hung
    until the acquire's deadline before the writer knew the database was away; the partition
    fault test failed that way whenever the cut found the writer between two writes.

    asyncpg's default reset sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``
    to the server on every release, a second round trip for each of our one-statement calls (see
    docs/decisions/0002-pool-without-reset.md). The engine leaves nothing there to undo: its SQL
    functions scope their settings (SET clauses, ``set_config(..., true)``), the migration runner
    unlocks its advisory lock, the listener LISTENs on a connection of its own, and nothing opens
    a cursor. asyncpg still rolls back a transaction left open, before calling this reset.
    """
    with unavailable_when_refused():
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


@dataclass(frozen=True)
class DatabaseReadiness:
    """What /readyz reports of the database: does it answer, and is its schema ours?"""

    database: Literal["ok", "unreachable", "timeout"]
    migrations: Literal["ok", "outdated", "unknown"]


class Gateway:
    """Typed calls of ``queries.sql`` through an asyncpg pool owned by the caller.

    Its subclasses group the calls by who makes them (the delivery queue, the admin writes, the
    delivery-log reads); each call has a deadline, maps our SQLSTATEs to EngineErrors and raises
    DatabaseUnavailable when the database is away.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._q = queries()

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[PoolConnectionProxy]:
        with unavailable_when_refused():
            conn = await self.pool.acquire(timeout=QUERY_TIMEOUT_S)
        try:
            with unavailable_when_disconnected(conn):
                yield conn
        finally:
            with unavailable_when_disconnected(conn):  # its reset failed the same way
                await self.pool.release(conn)

    async def _fetch(self, name: str, *args: Any) -> list[asyncpg.Record]:
        with mapped_errors():
            async with self._conn() as conn:
                return list(await conn.fetch(self._q[name], *args, timeout=QUERY_TIMEOUT_S))

    async def _fetchval(self, name: str, *args: Any) -> Any:
        with mapped_errors():
            async with self._conn() as conn:
                return await conn.fetchval(self._q[name], *args, timeout=QUERY_TIMEOUT_S)

    async def readiness(self, deadline_s: float) -> DatabaseReadiness:
        """Whether the database answers and its schema is current, both within ``deadline_s``."""
        database: Literal["ok", "unreachable", "timeout"] = "unreachable"
        migrations: Literal["ok", "outdated", "unknown"] = "unknown"
        try:
            async with asyncio.timeout(deadline_s), self._conn() as conn:
                await conn.fetchval("SELECT 1")
                database = "ok"
                try:
                    await check_current(conn)
                    migrations = "ok"
                except SchemaOutdated:
                    migrations = "outdated"
        except TimeoutError:  # the deadline of the whole check, not of one call in it
            if database != "ok":
                database = "timeout"
        except DatabaseUnavailable:
            pass
        return DatabaseReadiness(database, migrations)
