"""Migration 0006 (limits across engines) upgrades a live database with deliveries in flight.

The previous release is rebuilt as it shipped (tests/support/previous_release.py): migrations up
to 0005 and its function files, whose claim_v1 kept no limit across engines. An engine of
that release leases rows; the database is migrated under them; the leases it holds count against
the endpoint's max_in_flight for the new claim, and its own claim_v1, now the new body's wrapper,
keeps the limit too. Then it stops and a new engine (claim_v2) delivers the rest.
"""

from __future__ import annotations

import asyncpg
import pytest

from engine.db.migrate import migrate
from engine.db.store import Store
from tests.support.factories import outcome
from tests.support.previous_release import PreviousReleaseStore


@pytest.fixture
async def old_db(old_db: asyncpg.Connection) -> asyncpg.Connection:
    """The previous release's database (conftest), with an endpoint allowing 2 in flight."""
    await old_db.execute(
        "SELECT webhooks.create_endpoint('acct_1', 'https://example.com/hook', '{*}',"
        " p_max_in_flight => 2)"
    )
    return old_db


async def test_leases_taken_before_the_upgrade_count_for_the_new_claim(
    old_db: asyncpg.Connection, old_pool: asyncpg.Pool
) -> None:
    """Three rows leased by an old engine before 0006 (its claim kept no limit) hold the endpoint
    at its max_in_flight of 2 after the upgrade: neither the new claim nor the old engine's gets
    more until results end enough of them; then the new engine delivers the rest."""
    await old_db.execute(
        "SELECT webhooks.emit('acct_1', 'email.sent', jsonb_build_object('n', n))"
        "  FROM generate_series(1, 5) n"
    )
    old_engine = PreviousReleaseStore(old_pool)
    before = [d for d, _ in await old_engine.claim({}, default_room=3, max_rows=100)]
    assert len(before) == 3

    await migrate(old_db)
    new_engine = Store(old_pool)
    assert await new_engine.claim({}, default_room=8, max_rows=100) == []
    assert await old_engine.claim({}, default_room=8, max_rows=100) == []
    await old_engine.record([outcome(before[0], 200), outcome(before[1], 200)])
    [(after, _)] = await new_engine.claim({}, default_room=8, max_rows=100)
    assert await old_engine.claim({}, default_room=8, max_rows=100) == []

    await new_engine.record([outcome(before[2], 200), outcome(after, 200)])
    rest = [d for d, _ in await new_engine.claim({}, default_room=8, max_rows=100)]
    assert len(rest) == 1
    await new_engine.record([outcome(rest[0], 200)])
    assert await old_db.fetchval("SELECT count(*) FROM webhooks.deliveries") == 0
    assert (
        await old_db.fetchval(
            "SELECT count(*) FROM webhooks.delivery_outcomes WHERE status = 'delivered'"
        )
        == 5
    )
