"""Migration 0005 (the waiting mark's expiry) upgrades a live database under an engine of the
previous version, which calls set_engine_waiting_v1(boolean) and never refreshes.

The previous release is rebuilt from the release tree (tests/support/previous_release.py, the
release that shipped 0005) with emit and the claim functions as they were before 0005
(``sql_before_0005/``). An old engine's calls are the same SQL by name as the new engine's
(queries.sql did not change them), so that release's Store issues them here. Between the
migration's commit and the re-applied function files the old bodies run against the new column
(first test); after them, the old engine runs the new bodies (second test). emit must never fail.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from engine.db.migrate import migrate
from engine.db.store import Store
from tests.support.db import Listener, listening, sql_endpoint
from tests.support.previous_release import PreviousReleaseStore, release_tree

PREVIOUS = Path(__file__).parent / "sql_before_0005"
EXPIRY = "0005_waiting_expiry.sql"
MARK = "SELECT waiting_until FROM webhooks.engine_state"


def tree(root: Path, *, with_expiry: bool, new_functions: bool) -> Path:
    """A copy of the shipped sql/ tree, migration 0005 (and any later one) only if asked for, and
    the previous release's emit and claim functions unless ``new_functions``."""
    release_tree(root)
    for path in (root / "migrations").iterdir():
        if int(path.name[:4]) >= 5 and not (with_expiry and path.name == EXPIRY):
            path.unlink()
    if not new_functions:
        for path in PREVIOUS.iterdir():
            shutil.copy(path, root / "functions" / path.name)
    return root


@pytest.fixture
async def old_db(empty_db_url: str, tmp_path: Path) -> AsyncIterator[asyncpg.Connection]:
    """A database migrated by the release before 0005, with a subscribed endpoint."""
    conn = await asyncpg.connect(empty_db_url)
    try:
        await migrate(conn, root=tree(tmp_path / "old", with_expiry=False, new_functions=False))
        await sql_endpoint(conn, ["email.sent"])
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def old_engine(empty_db_url: str, old_db: asyncpg.Connection) -> AsyncIterator[Store]:
    """The old engine's calls, through a pool as it makes them."""
    pool = await asyncpg.create_pool(empty_db_url, min_size=1, max_size=2)
    try:
        yield PreviousReleaseStore(pool)
    finally:
        await pool.close()


@pytest.fixture
async def wakeups(empty_db_url: str) -> AsyncIterator[Listener]:
    """A listener on webhooks_wakeup, as the old engine's."""
    async with listening(empty_db_url) as listener:
        yield listener


async def emit(conn: asyncpg.Connection) -> None:
    event_id = await conn.fetchval(
        "SELECT webhooks.emit('acct_1', 'email.sent', $1::jsonb)", json.dumps({"m": 1})
    )
    assert event_id is not None


async def test_old_bodies_work_between_the_migration_and_the_new_functions(
    old_db: asyncpg.Connection, old_engine: Store, wakeups: Listener, tmp_path: Path
) -> None:
    """With the column added but the old function bodies still in place, the old engine's mark
    (waiting) still makes emit notify, and its claim still clears it."""
    await old_engine.set_engine_waiting(True)
    await migrate(old_db, root=tree(tmp_path / "mid", with_expiry=True, new_functions=False))
    assert await old_db.fetchval(MARK) is None
    await emit(old_db)
    assert await wakeups.drain() == [""]
    assert len(await old_engine.claim({}, default_room=8, max_rows=100)) == 1
    await emit(old_db)
    assert await wakeups.drain() == [""]


async def test_an_old_engine_on_the_new_bodies_is_woken_for_one_lifetime(
    old_db: asyncpg.Connection, old_engine: Store, wakeups: Listener, tmp_path: Path
) -> None:
    """An old engine asleep at the upgrade gets no NOTIFY until it next goes to sleep (its poll
    finds the work); then its set_engine_waiting_v1(true) marks it until the mark expires, and
    its claim clears the mark."""
    await old_engine.set_engine_waiting(True)
    await migrate(old_db, root=tree(tmp_path / "new", with_expiry=True, new_functions=True))
    await emit(old_db)
    assert await wakeups.drain() == []
    assert len(await old_engine.claim({}, default_room=8, max_rows=100)) == 1

    await old_engine.set_engine_waiting(True)  # asleep again; it never refreshes
    await emit(old_db)
    assert await wakeups.drain() == [""]
    await old_db.execute(
        "UPDATE webhooks.engine_state SET waiting_until = now() - interval '1 second'"
    )
    await emit(old_db)
    assert await wakeups.drain() == [""]

    await old_engine.set_engine_waiting(True)
    assert len(await old_engine.claim({}, default_room=8, max_rows=100)) == 2
    assert await old_db.fetchval(MARK) is None
