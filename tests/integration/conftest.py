"""Fixtures of the upgrade tests: a database the previous release migrated, and its engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from engine.db.migrate import migrate
from tests.support.previous_release import PreviousReleaseStore, release_tree


@pytest.fixture
async def old_db(empty_db_url: str, tmp_path: Path) -> AsyncIterator[asyncpg.Connection]:
    """A connection to a database that the previous release migrated (release_tree)."""
    conn = await asyncpg.connect(empty_db_url)
    try:
        await migrate(conn, root=release_tree(tmp_path / "old"))
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def old_pool(empty_db_url: str, old_db: asyncpg.Connection) -> AsyncIterator[asyncpg.Pool]:
    """A pool on that database, as an engine holds one."""
    pool = await asyncpg.create_pool(empty_db_url, min_size=1, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
def old_engine(old_pool: asyncpg.Pool) -> PreviousReleaseStore:
    """The calls of an engine of the previous release, through that pool."""
    return PreviousReleaseStore(old_pool)
