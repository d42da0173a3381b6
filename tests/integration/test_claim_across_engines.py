"""claim_v2 keeps an endpoint's limits across engines: each engine is a connection of its own here.

max_in_flight counts every engine's leases, two claims of one endpoint at once cannot both see the
same room, and a rate limit is one schedule that every engine's claims take start times from.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import timedelta
from uuid import UUID

import asyncpg
import pytest

from tests.support.db import fan_out
from tests.support.previous_release import PreviousReleaseStore

CLAIM = "SELECT * FROM webhooks.claim_v2('{}'::uuid[], '{}'::integer[], $1::integer, $2::integer)"
CLAIM_V1 = "SELECT * FROM webhooks.claim_v1('{}'::uuid[], '{}'::integer[], $1::integer, 100)"
DELIVER = """
SELECT outcome FROM webhooks.record_attempts_v1(
    ARRAY[$1::bigint], ARRAY[$2::uuid], ARRAY[now()], '{1}', '{200}', '{NULL}', '{NULL}', '{NULL}',
    '{NULL}')"""
LEASED = "SELECT count(*) FROM webhooks.deliveries WHERE lease_token IS NOT NULL AND NOT ready"
NEXT_SLOT = "SELECT next_slot_at FROM webhooks.endpoint_pacing WHERE endpoint_id = $1"


@pytest.fixture
async def engines(db_url: str) -> AsyncIterator[list[asyncpg.Connection]]:
    """Three connections, one per engine."""
    conns = [await asyncpg.connect(db_url) for _ in range(3)]
    try:
        yield conns
    finally:
        for c in conns:
            await c.close()


async def endpoint(
    conn: asyncpg.Connection,
    events: int,
    *,
    max_in_flight: int = 8,
    ordering: str = "dispatch",
    rate_limit_per_s: float | None = None,
) -> UUID:
    """An endpoint with ``events`` deliveries due."""
    endpoint_id: UUID = await conn.fetchval(
        "SELECT id FROM webhooks.create_endpoint('acct_1', 'https://example.com/hook', '{*}',"
        " p_max_in_flight => $1, p_ordering => $2, p_rate_limit_per_s => $3)",
        max_in_flight,
        ordering,
        rate_limit_per_s,
    )
    await conn.execute(
        "SELECT webhooks.emit('acct_1', 'email.sent', jsonb_build_object('n', n))"
        "  FROM generate_series(1, $1) n",
        events,
    )
    return endpoint_id


@pytest.mark.parametrize("max_in_flight", [1, 2])
async def test_every_engines_leases_count_against_max_in_flight(
    conn: asyncpg.Connection, engines: list[asyncpg.Connection], max_in_flight: int
) -> None:
    """One engine leases max_in_flight rows; another then gets none until a result ends one of
    them, and then exactly one."""
    await endpoint(conn, 6, max_in_flight=max_in_flight)
    a, b, _ = engines
    first = await a.fetch(CLAIM, 8, 100)
    assert len(first) == max_in_flight
    assert await b.fetch(CLAIM, 8, 100) == []
    assert await a.fetch(CLAIM, 8, 100) == [], "the same engine gets no more either"
    assert await conn.fetchval(DELIVER, first[0]["delivery_id"], first[0]["lease_token"]) == (
        "delivered"
    )
    [one] = await b.fetch(CLAIM, 8, 100)
    assert one["delivery_id"] == max(r["delivery_id"] for r in first) + 1
    assert await conn.fetchval(LEASED) == max_in_flight


async def test_an_endpoint_being_claimed_is_skipped_by_another_claim(
    conn: asyncpg.Connection, engines: list[asyncpg.Connection]
) -> None:
    """While one engine's claim transaction holds an endpoint, another engine's claim skips it
    (it neither waits nor counts leases not yet committed); after the commit it sees them."""
    await endpoint(conn, 6, max_in_flight=4)
    a, b, _ = engines
    async with a.transaction():
        assert len(await a.fetch(CLAIM, 2, 100)) == 2
        assert await b.fetch(CLAIM, 8, 100) == []
    assert len(await b.fetch(CLAIM, 8, 100)) == 2
    assert await conn.fetchval(LEASED) == 4


async def test_concurrent_claims_never_lease_past_max_in_flight(
    conn: asyncpg.Connection, engines: list[asyncpg.Connection]
) -> None:
    """Three engines claiming at once, again and again while results come in, never hold more
    than max_in_flight leases of one endpoint between them."""
    await endpoint(conn, 60, max_in_flight=3)
    most = 0
    delivered = 0
    while delivered < 60:
        batches = await asyncio.gather(*(e.fetch(CLAIM, 8, 100) for e in engines))
        leased = await conn.fetchval(LEASED)
        most = max(most, leased)
        assert leased <= 3
        for row in [r for batch in batches for r in batch][:2]:  # some results, not all
            await conn.fetchval(DELIVER, row["delivery_id"], row["lease_token"])
            delivered += 1
        if not any(batches):  # every claim took nothing: end one lease anyway
            held = await conn.fetchrow(
                "SELECT id, lease_token FROM webhooks.deliveries WHERE lease_token IS NOT NULL"
                " ORDER BY id LIMIT 1"
            )
            assert held is not None
            await conn.fetchval(DELIVER, held["id"], held["lease_token"])
            delivered += 1
    assert most == 3


async def test_strict_endpoint_goes_one_at_a_time_even_with_earlier_leases(
    conn: asyncpg.Connection, engines: list[asyncpg.Connection]
) -> None:
    """An endpoint switched to strict while dispatch attempts are in flight gets nothing more
    until they end: strict means one in flight across engines, whatever was leased before."""
    endpoint_id = await endpoint(conn, 4, max_in_flight=2)
    a, b, _ = engines
    first = await a.fetch(CLAIM, 1, 100)
    assert len(first) == 1
    await conn.execute("SELECT webhooks.update_endpoint($1, p_ordering => 'strict')", endpoint_id)
    # The head (the oldest live row) is leased, so nothing goes; after it ends, the next one.
    assert await b.fetch(CLAIM, 8, 100) == []
    await conn.fetchval(DELIVER, first[0]["delivery_id"], first[0]["lease_token"])
    [head] = await b.fetch(CLAIM, 8, 100)
    assert head["delivery_id"] == first[0]["delivery_id"] + 1
    assert await a.fetch(CLAIM, 8, 100) == []


async def test_rate_limit_is_one_schedule_across_engines(
    conn: asyncpg.Connection, engines: list[asyncpg.Connection]
) -> None:
    """Each leased row of a rate-limited endpoint gets the next start time, 1/rate after the one
    before, whichever engine claims it; send_in_s is each start relative to the claim's end."""
    endpoint_id = await endpoint(conn, 8, rate_limit_per_s=0.5)  # a start every 2 s
    a, b, _ = engines
    first = await a.fetch(CLAIM, 3, 100)
    after_first = await conn.fetchval(NEXT_SLOT, endpoint_id)
    second = await b.fetch(CLAIM, 3, 100)
    after_second = await conn.fetchval(NEXT_SLOT, endpoint_id)
    assert after_second - after_first == timedelta(seconds=6)
    # The first claim's first start is now: it may have passed by the claim's end (0, not less).
    for rows in (first[1:], second):
        starts = [r["send_in_s"] for r in rows]
        gaps = [round(y - x, 3) for x, y in itertools.pairwise(starts)]
        assert gaps == [2.0] * (len(rows) - 1)
    assert 1.5 < first[1]["send_in_s"] - first[0]["send_in_s"] <= 2.0
    # The second claim's first start is the first claim's last plus 2 s, less the time between
    # the two claims' ends (well under a second here).
    assert 4.0 < second[0]["send_in_s"] - first[0]["send_in_s"] + 2.0 <= 8.0
    assert first[0]["send_in_s"] < 0.5
    without = await endpoint(conn, 0)
    await conn.execute("SELECT webhooks.emit('acct_1', 'email.opened', '{}')")
    rows = await a.fetch(CLAIM, 8, 100)
    assert {r["send_in_s"] for r in rows if r["endpoint_id"] == without} == {0.0}


@pytest.mark.parametrize(("lease_s", "granted"), [(120, 4), (60, 2)])
async def test_rate_limited_starts_are_given_within_a_quarter_of_the_lease(
    conn: asyncpg.Connection, engines: list[asyncpg.Connection], lease_s: int, granted: int
) -> None:
    """A claim leases a rate-limited endpoint's rows only as far ahead as a quarter of the lease
    (one start every 10 s: 30 s holds four starts, 15 s two), so each starts with most of its
    lease left."""
    await conn.execute(
        "UPDATE webhooks.settings SET lease_duration = $1", timedelta(seconds=lease_s)
    )
    await endpoint(conn, 8, rate_limit_per_s=0.1)
    rows = await engines[0].fetch(CLAIM, 8, 100)
    assert len(rows) == granted
    assert await engines[1].fetch(CLAIM, 8, 100) == []


async def test_claim_v1_of_a_previous_engine_keeps_the_limit_too(
    conn: asyncpg.Connection, engines: list[asyncpg.Connection], db_url: str
) -> None:
    """An engine of the previous release (claim_v1, no start times) running beside new ones
    during an upgrade gets the old columns, and its leases count against max_in_flight."""
    await endpoint(conn, 5, max_in_flight=2)
    old = await engines[0].fetch(CLAIM_V1, 8)
    assert len(old) == 2
    assert "send_in_s" not in old[0]
    assert await engines[1].fetch(CLAIM, 8, 100) == []
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=1)
    try:
        assert await PreviousReleaseStore(pool).claim({}, default_room=8, max_rows=100) == []
    finally:
        await pool.close()


async def test_a_claim_over_many_endpoints_takes_a_bounded_number_of_locks(
    conn: asyncpg.Connection,
) -> None:
    """A claim that walks 600 endpoints takes one advisory lock per bucket of endpoints (256 at
    most), not one per endpoint: the server's shared lock table is sized for tens per
    transaction, and one lock each would run a claim over thousands of endpoints out of it."""
    await conn.execute(
        "INSERT INTO webhooks.endpoints (account_id, url, event_types, secret)"
        " SELECT 'many_' || g, 'https://example.com/' || g, '{*}',"
        "        'whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA='"
        "   FROM generate_series(1, 600) AS g"
    )
    await conn.execute(
        "SELECT webhooks.emit('many_' || g, 'email.sent', '{}') FROM generate_series(1, 600) g"
    )
    await fan_out(conn)
    async with conn.transaction():
        rows = await conn.fetch(CLAIM, 8, 1000)
        # The buckets' locks are the two-key form (objsubid 2); the fan-out's is the other.
        locks = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2"
            " AND pid = pg_backend_pid()"
        )
    assert len(rows) == 600
    assert 200 < locks <= 256
