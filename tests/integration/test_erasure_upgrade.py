"""Migration 0010 (erasure and per-account retention) upgrades a live database: deliveries claimed
before it are recorded after it, and the new functions work on rows written before it.

The previous release is rebuilt from the shipped tree without migrations 0010 and later, without
75_erasure.sql, and with 70_maintenance.sql as it was before 0010 (``sql_before_0010/``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import asyncpg

from engine.db import sqlfiles
from engine.db.migrate import migrate
from engine.db.store import Store
from tests.support.factories import claim, emit, outcome

PREVIOUS = Path(__file__).parent / "sql_before_0010"


def previous_release(root: Path) -> Path:
    shutil.copytree(sqlfiles.sql_root(), root)
    for path in (root / "migrations").iterdir():
        if int(path.name[:4]) >= 10:
            path.unlink()
    (root / "functions" / "75_erasure.sql").unlink()
    shutil.copy(PREVIOUS / "70_maintenance.sql", root / "functions" / "70_maintenance.sql")
    return root


async def test_in_flight_deliveries_survive_the_upgrade_and_old_rows_can_be_erased(
    empty_db_url: str, tmp_path: Path
) -> None:
    """Two deliveries leased under the previous release are recorded delivered after 0010; the
    third is claimed after it; the events written before it are erased and purged with the new
    functions."""
    conn = await asyncpg.connect(empty_db_url)
    pool = await asyncpg.create_pool(empty_db_url, min_size=1, max_size=2)
    try:
        await migrate(conn, root=previous_release(tmp_path / "old"))
        assert await conn.fetchval("SELECT to_regclass('webhooks.erasures')") is None
        store = Store(pool)
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
        assert (await store.erase_recipient("acct_1", "a@example.com")).events == 3
        payloads = await conn.fetch("SELECT payload FROM webhooks.events ORDER BY id")
        assert [json.loads(p["payload"])["to"] for p in payloads] == [
            "redacted@redacted.invalid"
        ] * 3
        await store.set_account_retention("acct_1", None)
        assert await store.purge_account_retention(10) == 0
    finally:
        await pool.close()
        await conn.close()
