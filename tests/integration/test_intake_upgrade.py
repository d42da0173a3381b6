"""Migration 0011 (the intake) upgrades a live database under an engine of the previous version.

The previous release is rebuilt as it shipped (tests/support/previous_release.py). A delivery is
leased and another is pending when the upgrade begins. Between the migration's commit and the
re-applied function files, emit still writes deliveries itself; after them, it writes into the
intake, and the old engine's claim (claim_v1, which runs the new claim_v2) fans the event out.
Every delivery is sent and recorded once, in the events' order.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from engine.db.migrate import migrate
from engine.db.store import Store
from tests.support.db import sql_endpoint
from tests.support.factories import claim, emit, outcome
from tests.support.previous_release import upgrade_window_tree

MIGRATION = "0011_intake.sql"


@pytest.mark.parametrize("new_functions", [False, True])
async def test_an_old_engine_delivers_what_is_accepted_across_the_upgrade(
    old_db: asyncpg.Connection, old_engine: Store, tmp_path: Path, new_functions: bool
) -> None:
    """The leased delivery is recorded once after the upgrade; the pending one and an event
    accepted after the upgrade are claimed by the old engine, the latter through the intake once
    the new function bodies are in."""
    endpoint = await sql_endpoint(old_db, ["*"])
    before = await emit(old_db, "acct_1")
    (leased,) = await claim(old_engine, endpoint, 1)
    pending = await emit(old_db, "acct_1")

    root = upgrade_window_tree(tmp_path / "new") if not new_functions else None
    report = await migrate(old_db, root=root)
    assert MIGRATION in report.applied
    assert await old_db.fetchval("SELECT count(*) FROM webhooks.intake") == 0

    after = await old_db.fetchval(
        "SELECT webhooks.emit('acct_1', 'email.sent', '{\"n\": 2}'::jsonb)"
    )
    accepted = await old_db.fetchval("SELECT count(*) FROM webhooks.intake")
    assert accepted == (1 if new_functions else 0)

    recorded = await old_engine.record([outcome(leased, 200)])
    assert [(r.delivery_id, r.outcome) for r in recorded] == [(leased.id, "delivered")]
    claimed = [d for d, _ in await old_engine.claim({endpoint: 8}, default_room=8, max_rows=8)]
    assert [d.event_id for d in claimed] == [pending, after]
    assert await old_db.fetchval("SELECT count(*) FROM webhooks.intake") == 0
    assert await old_engine.record([outcome(d, 200) for d in claimed])
    outcomes = await old_db.fetch(
        "SELECT event_id, status FROM webhooks.delivery_outcomes ORDER BY event_id"
    )
    assert [(r["event_id"], r["status"]) for r in outcomes] == [
        (before, "delivered"),
        (pending, "delivered"),
        (after, "delivered"),
    ]
    assert await old_db.fetchval("SELECT count(*) FROM webhooks.attempts") == 3
