"""A results batch written twice, as after a connection lost between commit and reply."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from engine.db.store import Store
from engine.models import ErrorKind, Outcome
from tests.support.factories import claim, emit


async def test_a_replayed_results_batch_is_recorded_once(
    store: Store, conn: asyncpg.Connection
) -> None:
    """The writer retries a batch whose reply was lost; the retry records nothing new and returns
    the first call's outcomes, so the attempt log shows one row per request made."""
    await conn.execute("UPDATE webhooks.settings SET retry_schedule = '{1 hour}'")
    endpoint_id, _ = await store.create_endpoint("acct_1", "https://example.com/h")
    gone_id, _ = await store.create_endpoint("acct_2", "https://gone.example.com/h")
    for account in ("acct_1", "acct_1", "acct_2"):
        await emit(conn, account)
    ok, retry = await claim(store, endpoint_id, 2)
    [gone] = await claim(store, gone_id, 1)
    now = datetime.now(UTC)
    batch = [
        Outcome(ok.id, ok.lease, now, 5, 200),
        Outcome(retry.id, retry.lease, now, 5, 0, ErrorKind.TIMEOUT, "no response"),
        Outcome(gone.id, gone.lease, now, 5, 410, ErrorKind.HTTP_STATUS, "HTTP 410 Gone"),
    ]
    first = await store.record(batch)
    assert [r.outcome for r in first] == ["delivered", "retry", "failed"]
    attempts_before = await conn.fetch("SELECT * FROM webhooks.attempts ORDER BY id")

    again = await store.record(batch)
    assert again == first
    assert await conn.fetch("SELECT * FROM webhooks.attempts ORDER BY id") == attempts_before
    live = await conn.fetchrow("SELECT id, attempts FROM webhooks.deliveries")
    assert live is not None
    assert (live["id"], live["attempts"]) == (retry.id, 1)


async def test_a_late_result_of_a_released_lease_is_still_stale(
    store: Store, conn: asyncpg.Connection
) -> None:
    """A different attempt under a lost lease is logged as stale, not taken for a replay."""
    endpoint_id, _ = await store.create_endpoint("acct_1", "https://example.com/h")
    await emit(conn, "acct_1")
    [first] = await claim(store, endpoint_id, 1)
    await conn.execute("UPDATE webhooks.deliveries SET due_at = now() - interval '1 second'")
    [second] = await claim(store, endpoint_id, 1)
    assert second.lease != first.lease
    late = Outcome(first.id, first.lease, datetime.now(UTC), 5, 200)
    [recorded] = await store.record([late])
    assert recorded.outcome == "stale"
    [fresh] = await store.record([Outcome(second.id, second.lease, datetime.now(UTC), 5, 200)])
    assert fresh.outcome == "delivered"
    outcomes = await conn.fetch("SELECT outcome FROM webhooks.attempts ORDER BY id")
    assert [r["outcome"] for r in outcomes] == ["stale", "delivered"]
