"""Helpers for tests that call the SQL API directly."""

from __future__ import annotations

from collections.abc import Awaitable

import asyncpg


async def error_of(conn: asyncpg.Connection, call: Awaitable[object]) -> asyncpg.PostgresError:
    """Await a call that must fail, in a savepoint, and return the database error it raised."""
    try:
        async with conn.transaction():
            await call
    except asyncpg.PostgresError as exc:
        return exc
    raise AssertionError("the call did not fail")
