"""Migration 0009 (catalogue schemas, test events, operational events) upgrades a live database
under an engine of the previous version.

The previous release is rebuilt as it shipped (tests/support/previous_release.py). A delivery is
leased when the upgrade begins; the old engine's calls (claim_v1, record_attempts_v1,
list_deliveries_v1, get_delivery_v1) keep working between the migrations' commits and the
re-applied function files, and after them, and the in-flight delivery is recorded once.
"""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
import pytest

from engine.db.migrate import migrate
from engine.db.store import Store
from tests.support.db import sql_endpoint
from tests.support.factories import claim, emit, outcome
from tests.support.previous_release import upgrade_window_tree

MIGRATION = "0009_portal_catalogue.sql"
LIST_V1 = "SELECT * FROM webhooks.list_deliveries_v1(NULL, NULL, NULL, NULL, NULL, NULL, NULL, 100)"


@pytest.mark.parametrize("new_functions", [False, True])
async def test_an_old_engine_works_across_the_upgrade(
    old_db: asyncpg.Connection, old_engine: Store, tmp_path: Path, new_functions: bool
) -> None:
    """A delivery leased before 0009 is recorded once after it; the old engine's claims, records
    and delivery-log reads work on the migrated schema with the old bodies (between the
    migration's commit and the function files) and with the new ones; no envelope is a test."""
    endpoint = await sql_endpoint(old_db, ["*"])
    await emit(old_db, "acct_1")
    (leased,) = await claim(old_engine, endpoint, 1)
    await emit(old_db, "acct_1")

    root = upgrade_window_tree(tmp_path / "new") if not new_functions else None
    report = await migrate(old_db, root=root)
    assert MIGRATION in report.applied

    recorded = await old_engine.record([outcome(leased, 200)])
    assert [(r.delivery_id, r.outcome) for r in recorded] == [(leased.id, "delivered")]
    claimed = await old_engine.claim({endpoint: 8}, default_room=8, max_rows=8)
    assert len(claimed) == 1
    envelope = json.loads(claimed[0][0].body)
    assert "test" not in envelope
    assert await old_engine.record([outcome(claimed[0][0], 500)])
    rows = await old_db.fetch(LIST_V1)
    assert sorted((r["delivery_id"], r["status"]) for r in rows) == [
        (leased.id, "delivered"),
        (claimed[0][0].id, "retrying"),
    ]
    detail = await old_db.fetchrow("SELECT * FROM webhooks.get_delivery_v1($1)", leased.id)
    assert detail is not None
    assert json.loads(detail["payload"]) == {"n": 1}
    assert await old_db.fetchval("SELECT count(*) FROM webhooks.events WHERE test") == 0
    assert (
        await old_db.fetchval(
            "SELECT count(*) FROM webhooks.attempts WHERE delivery_id = $1", leased.id
        )
        == 1
    )
    assert await old_db.fetchval(
        "SELECT bool_and(schema IS NOT NULL AND example IS NOT NULL) FROM webhooks.event_types"
    )
