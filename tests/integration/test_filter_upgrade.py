"""Migration 0007 (endpoints.filter, the webhooks.new_event type) upgrades a live database.

The previous release is rebuilt as it shipped (tests/support/previous_release.py). Deliveries are
pending and leased when the migration runs; the old emit body keeps working between the
migrations' commits and the re-applied function files, and afterwards the new bodies deliver as
before to endpoints without a filter.
"""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg

from engine.db.migrate import migrate
from engine.db.store import Store
from tests.support.db import sql_endpoint
from tests.support.previous_release import upgrade_window_tree

FILTER = "0007_filter_and_emit_many.sql"


async def emit(conn: asyncpg.Connection, n: int) -> int:
    event_id: int | None = await conn.fetchval(
        "SELECT webhooks.emit('acct_1', 'email.sent', $1::jsonb)", json.dumps({"n": n})
    )
    assert event_id is not None
    return event_id


async def test_upgrade_with_deliveries_in_flight(
    old_db: asyncpg.Connection, old_engine: Store, tmp_path: Path
) -> None:
    """Leased and pending deliveries survive the migration and are claimed as before; the old
    emit works on the new column, and the new bodies deliver to the unfiltered endpoint and
    filter once a filter is set."""
    conn = old_db
    endpoint_id = await sql_endpoint(conn, ["email.sent"])
    await emit(conn, 1)
    leased = await old_engine.claim({}, default_room=8, max_rows=100)
    assert len(leased) == 1
    await emit(conn, 2)

    report = await migrate(conn, root=upgrade_window_tree(tmp_path / "mid"))
    assert FILTER in report.applied
    assert await conn.fetchval("SELECT filter FROM webhooks.endpoints") is None
    await emit(conn, 3)  # the old body, the new schema

    await migrate(conn)
    await emit(conn, 4)
    claimed = await old_engine.claim({}, default_room=8, max_rows=100)
    assert len(claimed) == 3  # 2, 3 and 4; 1 is still leased
    assert await conn.fetchval("SELECT count(*) FROM webhooks.deliveries") == 4

    await conn.execute(
        "UPDATE webhooks.endpoints SET filter = '$.n == 6' WHERE id = $1", endpoint_id
    )
    assert await conn.fetchval("SELECT webhooks.emit('acct_1', 'email.sent', '{\"n\": 5}')") is None
    await emit(conn, 6)
    assert (
        await conn.fetchval(
            "SELECT webhooks.emit_many(ARRAY[('acct_1', 'email.sent', '{\"n\": 6}', NULL),"
            " ('acct_1', 'email.sent', '{\"n\": 7}', NULL)]::webhooks.new_event[])"
        )
        == 1
    )
