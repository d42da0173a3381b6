"""Helpers for tests that call the SQL API directly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID

import asyncpg


def with_database(url: str, database: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def with_user(url: str, user: str) -> str:
    """The same URL connecting as another role (without a password: trust auth)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{user}@{host}", parts.path, parts.query, parts.fragment))


@asynccontextmanager
async def scratch_database(
    server_url: str, name: str, *, template: str | None = None
) -> AsyncIterator[str]:
    """Create database ``name`` (a copy of ``template``, if given), yield its URL, drop it."""
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        copy = f' TEMPLATE "{template}"' if template else ""
        await admin.execute(f'CREATE DATABASE "{name}"{copy}')
        try:
            yield with_database(server_url, name)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


# The UTC day each template database last had its day partitions made for (see current_template).
_TEMPLATE_DAYS: dict[str, date] = {}


async def current_template(server_url: str, template: str) -> str:
    """``template``, with the day partitions of today (UTC) made, for a copy made now. Migrating
    makes them from yesterday on, and the engine's maintenance makes each new day's: a template
    migrated before midnight lacked the newest day's in the copies made after it, and the tests
    that count partitions, or keep a day's rows in one, failed for the few runs that crossed
    midnight. The template is connected to only while no copy of it is being made."""
    today = datetime.now(UTC).date()
    if _TEMPLATE_DAYS.get(template) != today:
        conn = await asyncpg.connect(with_database(server_url, template))
        try:
            await conn.execute("SELECT webhooks.maintain_v1()")
        finally:
            await conn.close()
        _TEMPLATE_DAYS[template] = today
    return template


async def wait_for_lock_wait(observer: asyncpg.Connection, pid: int) -> None:
    """Return once backend ``pid`` waits for a lock another transaction holds (pg_locks shows it
    an ungranted lock), polling from ``observer``, a third connection."""
    query = "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = $1 AND NOT granted)"
    while True:
        if await observer.fetchval(query, pid):
            return
        await asyncio.sleep(0.01)


async def error_of(conn: asyncpg.Connection, call: Awaitable[object]) -> asyncpg.PostgresError:
    """Await a call that must fail, in a savepoint, and return the database error it raised."""
    try:
        async with conn.transaction():
            await call
    except asyncpg.PostgresError as exc:
        return exc
    raise AssertionError("the call did not fail")


async def sql_endpoint(
    conn: asyncpg.Connection, event_types: list[str], account_id: str = "acct_1"
) -> UUID:
    """An endpoint created through the SQL API, for tests that never deliver to it."""
    endpoint_id: UUID = await conn.fetchval(
        "SELECT id FROM webhooks.create_endpoint($1, 'https://example.com/hook', $2::text[])",
        account_id,
        event_types,
    )
    return endpoint_id


class Listener:
    """A second connection LISTENing on a channel, collecting the payloads it is sent."""

    def __init__(self, conn: asyncpg.Connection, channel: str) -> None:
        self.conn = conn
        self.channel = channel
        self.payloads: list[str] = []

    def _on_notify(self, _c: object, _pid: int, _channel: str, payload: object) -> None:
        self.payloads.append(str(payload))

    async def start(self) -> None:
        await self.conn.add_listener(self.channel, self._on_notify)

    async def drain(self) -> list[str]:
        """Everything notified so far: a round trip reads all the server sent before it."""
        await self.conn.fetchval("SELECT 1")
        await asyncio.sleep(0)
        return list(self.payloads)


@asynccontextmanager
async def listening(db_url: str, channel: str = "webhooks_wakeup") -> AsyncIterator[Listener]:
    """A :class:`Listener` on ``channel`` (the wake-ups by default), on its own connection as the
    engine's is."""
    listener = Listener(await asyncpg.connect(db_url), channel)
    try:
        await listener.start()
        yield listener
    finally:
        await listener.conn.close()


async def fan_out(conn: asyncpg.Connection) -> int:
    """Fan every accepted event out of the intake into its event and deliveries, as the engine's
    next claim does first (sql/functions/35_intake.sql); returns how many it took. On a schema
    from before the intake (an upgrade test's), emit wrote the deliveries itself: nothing to do."""
    if await conn.fetchval("SELECT to_regprocedure('webhooks.fan_out_v1(integer)') IS NULL"):
        return 0
    taken = 0
    while count := await conn.fetchval("SELECT webhooks.fan_out_v1(1000)"):
        taken += count
    return taken


async def intake_drained(conn: asyncpg.Connection) -> bool:
    """True once a running engine has fanned out every accepted event (for ``wait_until``)."""
    return bool(await conn.fetchval("SELECT NOT EXISTS (SELECT FROM webhooks.intake)"))
