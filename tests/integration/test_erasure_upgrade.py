"""Migration 0010 (erasure and per-account retention) upgrades a live database: deliveries claimed
before it are recorded after it, and the new functions work on rows written before it.

The previous release is rebuilt as it shipped (tests/support/previous_release.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg

from engine.db.migrate import migrate
from engine.db.store import Store
from tests.support.factories import claim, emit, outcome
from tests.support.previous_release import PreviousReleaseStore, release_tree


async def test_in_flight_deliveries_survive_the_upgrade_and_old_rows_can_be_erased(
    empty_db_url: str, tmp_path: Path
) -> None:
    """Two deliveries leased under the previous release are recorded delivered after 0010; the
    third is claimed after it; the events written before it are erased and purged with the new
    functions."""
    conn = await asyncpg.connect(empty_db_url)
    pool = await asyncpg.create_pool(empty_db_url, min_size=1, max_size=2)
    try:
        await migrate(conn, root=release_tree(tmp_path / "old"))
        assert await conn.fetchval("SELECT to_regclass('webhooks.erasures')") is None
        store = PreviousReleaseStore(pool)
        endpoint, _ = await store.create_endpoint("acct_1", "https://a.example.com/hook")
        for n in range(3):
            await emit(conn, "acct_1", payload={"to": "a@example.com", "n": n})
        in_flight = await claim(store, endpoint, 2)

        report = await migrate(conn)
        assert "0010_erasure_and_account_retention.sql" in report.applied

        recorded = await store.record([outcome(d, 200) for d in in_flight])
        assert [r.outcome.value for r in recorded] == ["delivered", "delivered"]
        (last,) = await claim(store, endpoint, 5)
        assert json.loads(last.body)["data"] == {"to": "a@example.com", "n": 2}
        new = Store(pool)  # an engine of this release
        assert (await new.erase_recipient("acct_1", "a@example.com")).events == 3
        payloads = await conn.fetch("SELECT payload FROM webhooks.events ORDER BY id")
        assert [json.loads(p["payload"])["to"] for p in payloads] == [
            "redacted@redacted.invalid"
        ] * 3
        await new.set_account_retention("acct_1", None)
        assert await new.purge_account_retention(10) == 0
    finally:
        await pool.close()
        await conn.close()
