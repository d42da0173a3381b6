"""The ready set (migration 0004) on a real Postgres: what a claim walks, how rows move in and out.

A claim reads only deliveries marked ready. Leasing and scheduling a retry take a row out; the
claim's promotion step puts it back once its due_at has come (a retry's time, an expired lease);
release puts it back at once. Clock-dependent states are set with raw SQL.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from engine.db.store import Store
from engine.models import Delivery, EndpointConfig
from tests.support.db import fan_out
from tests.support.factories import outcome

Claimed = list[tuple[Delivery, EndpointConfig]]

CLAIM_SQL = (
    "SELECT * FROM webhooks.claim_v2('{}'::uuid[], '{}'::integer[], $1::integer, $2::integer)"
)

# Records 2xx results for claimed rows ($1 ids, $2 their leases).
DELIVER = """
SELECT count(*) FROM webhooks.record_attempts_v1(
    $1::bigint[], $2::uuid[], array_fill(now(), ARRAY[cardinality($1)]),
    array_fill(1, ARRAY[cardinality($1)]), array_fill(200, ARRAY[cardinality($1)]),
    array_fill(NULL::text, ARRAY[cardinality($1)]), array_fill(NULL::text, ARRAY[cardinality($1)]),
    array_fill(NULL::text, ARRAY[cardinality($1)]),
    array_fill(NULL::double precision, ARRAY[cardinality($1)]))"""

# What a statement read of the hot table, from the statistics views: tuples (sequential, index
# entries, heap fetches) and buffers (heap and indexes, hit or read).
DELIVERIES_READS = """
SELECT coalesce(t.seq_tup_read, 0) + coalesce(t.idx_tup_fetch, 0)
       + (SELECT coalesce(sum(i.idx_tup_read), 0) FROM pg_stat_user_indexes i
           WHERE i.relid = 'webhooks.deliveries'::regclass) AS tuples,
       (SELECT coalesce(s.heap_blks_hit, 0) + coalesce(s.heap_blks_read, 0)
               + coalesce(s.idx_blks_hit, 0) + coalesce(s.idx_blks_read, 0)
          FROM pg_statio_user_tables s WHERE s.relid = 'webhooks.deliveries'::regclass) AS buffers
  FROM pg_stat_user_tables t WHERE t.relid = 'webhooks.deliveries'::regclass"""


async def endpoints(
    conn: asyncpg.Connection,
    prefix: str,
    n: int,
    ordering: str = "dispatch",
    max_in_flight: int = 8,
) -> None:
    """n endpoints, one account each (``<prefix>_<i>``), subscribed to every event type."""
    await conn.execute(
        "INSERT INTO webhooks.endpoints"
        "  (account_id, url, event_types, secret, ordering, max_in_flight)"
        " SELECT $1 || '_' || g, 'https://example.com/' || $1 || '/' || g, '{*}',"
        "        'whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=', $3, $4"
        "   FROM generate_series(1, $2) AS g",
        prefix,
        n,
        ordering,
        max_in_flight,
    )


async def emit(conn: asyncpg.Connection, prefix: str, n: int, events: int = 1) -> list[int]:
    """Emit ``events`` events to each of the accounts ``<prefix>_1..n``; the new delivery ids."""
    first = await conn.fetchval("SELECT coalesce(max(id), 0) FROM webhooks.deliveries")
    await conn.execute(
        "SELECT webhooks.emit($1 || '_' || a, 'email.sent', jsonb_build_object('n', e))"
        "  FROM generate_series(1, $2) AS a, generate_series(1, $3) AS e ORDER BY e, a",
        prefix,
        n,
        events,
    )
    await fan_out(conn)
    rows = await conn.fetch("SELECT id FROM webhooks.deliveries WHERE id > $1 ORDER BY id", first)
    return [r["id"] for r in rows]


async def claim(store: Store, max_rows: int = 100, room: int = 8) -> Claimed:
    return await store.claim({}, default_room=room, max_rows=max_rows)


def ids(claimed: Claimed) -> list[int]:
    return sorted(d.id for d, _ in claimed)


async def make_due(conn: asyncpg.Connection, delivery_ids: list[int]) -> None:
    """Move due times into the past: the retries' time came, or the leases expired."""
    await conn.execute(
        "UPDATE webhooks.deliveries SET due_at = now() - interval '1 second' WHERE id = ANY ($1)",
        delivery_ids,
    )


async def ready_of(conn: asyncpg.Connection, delivery_ids: list[int]) -> list[bool]:
    rows = await conn.fetch(
        "SELECT ready FROM webhooks.deliveries WHERE id = ANY ($1) ORDER BY id", delivery_ids
    )
    return [r["ready"] for r in rows]


async def down_endpoints(store: Store, conn: asyncpg.Connection, prefix: str, n: int) -> None:
    """n endpoints that are down: half with one delivery waiting for its retry (recorded through
    record_attempts_v1), half with one leased to an attempt still running."""
    await endpoints(conn, prefix, n)
    await emit(conn, prefix, n)
    leased = await claim(store, max_rows=n, room=1)
    assert len(leased) == n
    await store.record([outcome(d, 500) for d, _ in leased[: n // 2]])


async def vacuumed(conn: asyncpg.Connection) -> None:
    """VACUUM (ANALYZE) the hot table with every earlier commit's WAL flushed first, so that the
    vacuum marks all its pages all-visible whatever the timing. The test servers commit
    asynchronously (the embedded one runs with synchronous_commit off, and the claim sets it
    off for its own transaction); a tuple whose inserting commit is not yet flushed cannot be
    hinted committed, and its page is then left out of the visibility map. The walk's
    index-only probes then fetch the heap, one tuple more each, unless the WAL writer happened to
    flush in between: the claim's reads swung by ten tuples with the timing. A transactional
    message with a synchronous commit flushes the WAL up to it on Postgres 15 and 18 alike."""
    async with conn.transaction():
        await conn.execute("SET LOCAL synchronous_commit = on")
        await conn.execute("SELECT pg_logical_emit_message(true, 'tests', 'flush')")
    await conn.execute("VACUUM (ANALYZE) webhooks.deliveries")


async def reads_of_claim(
    conn: asyncpg.Connection, max_rows: int, room: int = 8
) -> tuple[list[Any], int, int]:
    """Claim on ``conn``; the rows and the hot table's tuples and buffers the claim read."""

    async def reads() -> tuple[int, int]:
        await conn.execute("SELECT pg_stat_force_next_flush()")
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        row = await conn.fetchrow(DELIVERIES_READS)
        assert row is not None
        return int(row["tuples"]), int(row["buffers"])

    tuples, buffers = await reads()
    rows = await conn.fetch(CLAIM_SQL, room, max_rows)
    tuples_after, buffers_after = await reads()
    return list(rows), tuples_after - tuples, buffers_after - buffers


async def test_claim_work_does_not_grow_with_endpoints_that_have_nothing_due(
    store: Store, conn: asyncpg.Connection
) -> None:
    """A claim of the same healthy rows reads as many tuples of the hot table with 1,000 and 3,000
    endpoints whose deliveries wait for a retry or are leased as with 10 (before the ready set it
    probed each of them: an index probe and a heap fetch per endpoint); its buffers grow only by
    the indexes' depth, which 1,000 and 3,000 rows share. Each claim's rows are delivered before
    the next claim: a claim counts the leases of the endpoints it leases for (max_in_flight holds
    across engines), and those must be the same at each size."""
    await endpoints(conn, "ok", 5)
    await down_endpoints(store, conn, "down", 10)
    measured: list[tuple[int, int]] = []
    for down, prefix in ((0, ""), (990, "more"), (2000, "most")):
        if down:
            await down_endpoints(store, conn, prefix, down)
        fresh = await emit(conn, "ok", 5, events=2)
        # Dead index entries of earlier updates are the vacuum's to remove (the engine vacuums the
        # hot table when it goes idle); the claim's own reads are what is compared here.
        await vacuumed(conn)
        await conn.fetch(CLAIM_SQL, 8, 0)  # plans made, as in a long-lived engine connection
        rows, tuples, buffers = await reads_of_claim(conn, 100)
        assert sorted(r["delivery_id"] for r in rows) == fresh
        assert {r["url"].split("/")[3] for r in rows} == {"ok"}
        measured.append((tuples, buffers))
        await conn.execute(
            DELIVER, [r["delivery_id"] for r in rows], [r["lease_token"] for r in rows]
        )
    # The down endpoints' rows.
    waiting = await conn.fetchval("SELECT count(*) FROM webhooks.deliveries WHERE NOT ready")
    assert waiting == 3000
    [(tuples_10, buffers_10), (tuples_1000, buffers_1000), (tuples_3000, buffers_3000)] = measured
    assert tuples_10 == tuples_1000 == tuples_3000, f"tuples read (10, 1,000, 3,000): {measured}"
    # From 10 to 1,000 rows the indexes gain a level, which every probe and insert descends.
    assert buffers_1000 - buffers_10 < 990 // 10, f"buffers (10, 1,000, 3,000): {measured}"
    assert buffers_3000 <= buffers_1000 + 4, f"buffers (10, 1,000, 3,000): {measured}"


async def test_a_capped_claim_walks_only_the_endpoints_it_reaches(conn: asyncpg.Connection) -> None:
    """A claim that fills after a few endpoints reads as many tuples of the hot table with 1,000
    and 3,000 endpoints that have ready rows as with 50, give or take a probe: its walk stops
    where the claim does (a backlog over thousands of endpoints, each claim taking the room the
    last results freed). Sorting the walk for the rotation would probe every endpoint with ready
    rows first."""
    measured: list[tuple[int, int]] = []
    for n, prefix in ((50, "few"), (950, "more"), (2000, "most")):
        await endpoints(conn, prefix, n)
        await emit(conn, prefix, n)
        await vacuumed(conn)
        await conn.fetch(CLAIM_SQL, 1, 0)  # plans made, as in a long-lived engine connection
        rows, tuples, buffers = await reads_of_claim(conn, 5, room=1)
        assert len(rows) == 5
        measured.append((tuples, buffers))
        await conn.execute(
            DELIVER, [r["delivery_id"] for r in rows], [r["lease_token"] for r in rows]
        )
    tuples_read = [t for t, _ in measured]
    buffers_read = [b for _, b in measured]
    # Within a probe or two where the walk's cursor stops fetching; the sorted walk read one more
    # per endpoint, about 1,000 more at 1,000.
    spread = max(tuples_read) - min(tuples_read)
    assert spread <= 5, f"tuples read (50, 1,000, 3,000): {measured}"
    # The indexes gain a level or two on the way, which every probe descends; a walk over every
    # endpoint would add at least a buffer per endpoint.
    assert buffers_read[2] - buffers_read[0] < 100, f"buffers (50, 1,000, 3,000): {measured}"


async def test_retry_becomes_claimable_once_its_time_comes(
    store: Store, conn: asyncpg.Connection
) -> None:
    """A recorded failure leaves the ready set; the claim promotes it back once due_at passes."""
    await endpoints(conn, "a", 1)
    [d1] = await emit(conn, "a", 1)
    [(delivery, _)] = await claim(store)
    assert await ready_of(conn, [d1]) == [False]
    [recorded] = await store.record([outcome(delivery, 500)])
    assert recorded.outcome == "retry"
    assert await ready_of(conn, [d1]) == [False]
    assert await claim(store) == []
    await make_due(conn, [d1])
    [(again, _)] = await claim(store)
    assert again.id == d1
    assert again.attempt == 2
    assert await ready_of(conn, [d1]) == [False]


async def test_expired_lease_becomes_claimable(store: Store, conn: asyncpg.Connection) -> None:
    """A lease whose engine died is promoted when it expires and leased again under a new token;
    a result under the old lease is then stale."""
    await endpoints(conn, "a", 1)
    [d1] = await emit(conn, "a", 1)
    [(first, _)] = await claim(store)
    assert await claim(store) == []
    await make_due(conn, [d1])
    [(second, _)] = await claim(store)
    assert second.id == d1
    assert second.lease != first.lease
    [stale] = await store.record([outcome(first, 500)])
    assert stale.outcome == "stale"


async def test_release_makes_rows_claimable_at_once(store: Store, conn: asyncpg.Connection) -> None:
    """Released rows go back to the ready set without waiting for their lease to expire."""
    await endpoints(conn, "a", 2)
    emitted = await emit(conn, "a", 2)
    claimed = [d for d, _ in await claim(store)]
    assert await store.release(claimed) == 2
    assert await ready_of(conn, emitted) == [True, True]
    assert ids(await claim(store)) == emitted


async def test_strict_ordering_blocks_on_a_waiting_head(
    store: Store, conn: asyncpg.Connection
) -> None:
    """A strict endpoint whose oldest delivery waits for its retry sends nothing, though later
    ones are ready; once the head is due, it goes first and alone."""
    await endpoints(conn, "s", 1, ordering="strict")
    [d1] = await emit(conn, "s", 1)
    [(head, _)] = await claim(store)
    await store.record([outcome(head, 500)])
    later = await emit(conn, "s", 1, events=3)
    assert await ready_of(conn, later) == [True, True, True]
    assert await claim(store) == []
    await make_due(conn, [d1])
    [(again, _)] = await claim(store)
    assert again.id == d1
    assert await claim(store) == []


async def test_strict_head_is_leased_once_by_engines_claiming_together(
    store: Store, db_url: str, conn: asyncpg.Connection
) -> None:
    """While one engine's claim holds a strict endpoint's head (its transaction still open), a
    second engine's claim takes nothing of that endpoint; after the commit, still nothing."""
    await endpoints(conn, "s", 1, ordering="strict")
    emitted = await emit(conn, "s", 1, events=3)
    other = await asyncpg.connect(db_url)
    try:
        async with conn.transaction():
            first = await conn.fetch(CLAIM_SQL, 8, 100)
            assert [r["delivery_id"] for r in first] == emitted[:1]
            assert await other.fetch(CLAIM_SQL, 8, 100) == []
        assert await other.fetch(CLAIM_SQL, 8, 100) == []
    finally:
        await other.close()


async def test_engines_promoting_at_once_lease_each_row_once(
    store: Store, db_url: str, conn: asyncpg.Connection
) -> None:
    """Several engines claiming at once, when many retries fall due together, split them: no
    delivery is leased twice, and together they take all of them."""
    await endpoints(conn, "a", 200)
    emitted = await emit(conn, "a", 200)
    await store.record([outcome(d, 500) for d, _ in await claim(store, max_rows=200)])
    await make_due(conn, emitted)
    engines = [await asyncpg.connect(db_url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(e.fetch(CLAIM_SQL, 8, 100) for e in engines))
        taken = [r["delivery_id"] for rows in results for r in rows]
        assert len(taken) == len(set(taken))
        while rest := await engines[0].fetch(CLAIM_SQL, 8, 100):
            taken.extend(r["delivery_id"] for r in rest)
    finally:
        for e in engines:
            await e.close()
    assert sorted(taken) == emitted
    assert await ready_of(conn, emitted) == [False] * 200


async def test_promotion_is_bounded_per_claim(store: Store, conn: asyncpg.Connection) -> None:
    """A claim promotes at most a bounded number of due rows, oldest due first; later claims
    promote the rest, so the first claim after an outage stays a short transaction."""
    await endpoints(conn, "a", 6, max_in_flight=256)  # room for 1,500 leases at once
    emitted = await emit(conn, "a", 6, events=250)
    await store.record([outcome(d, 500) for d, _ in await claim(store, max_rows=1500, room=1500)])
    await conn.execute(
        "UPDATE webhooks.deliveries SET due_at = now() - make_interval(secs => 2000 - id + $1)"
        " WHERE id = ANY ($2)",
        emitted[0],
        emitted,
    )
    await claim(store, max_rows=0)
    promoted = await conn.fetch("SELECT id FROM webhooks.deliveries WHERE ready ORDER BY id")
    assert [r["id"] for r in promoted] == emitted[:1000]
    await claim(store, max_rows=0)
    assert await ready_of(conn, emitted) == [True] * 1500


async def test_next_due_at_reads_the_waiting_set(store: Store, conn: asyncpg.Connection) -> None:
    """next_due_at_v1 is the earliest due_at of the waiting set (leases, retries), or a ready
    row's due_at, which has come already."""
    await endpoints(conn, "a", 2)
    d1, d2 = await emit(conn, "a", 2)
    claimed = {d.id: d for d, _ in await claim(store)}
    await store.record([outcome(claimed[d2], 500)])
    due = {
        r["id"]: r["due_at"] for r in await conn.fetch("SELECT id, due_at FROM webhooks.deliveries")
    }
    assert due[d1] < due[d2]  # a lease of minutes, a first retry a few minutes later
    assert await store.next_due_at() == due[d1]
    assert await store.release([claimed[d1]]) == 1
    released = await conn.fetchval("SELECT due_at FROM webhooks.deliveries WHERE id = $1", d1)
    assert await store.next_due_at() == released
