"""The engine vacuums the hot table when it goes idle after a burst, and only then.

Autovacuum is switched off for the hot table in these tests, so that every vacuum counted is the
engine's and none comes first by chance.

What a vacuum left is read from the primary key's pages (``pageinspect``), not from
``pg_stat_user_tables.n_dead_tup``: a backend that went idle within a second of its last report
holds its counts for up to ten seconds, so dead rows that the vacuum already removed can be added to
the statistics after it, and a check on them fails by chance. Nor from the heap's dead tuples: page
pruning removes those without a vacuum, but not their index entries, which the claim walks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg
import structlog.testing

from engine.delivery.idle_vacuum import IdleVacuum
from tests.support.engines import RunningEngine, wait_until
from tests.support.load import Load, delivered, make_load
from tests.support.receiver import Receiver

StartEngine = Callable[..., Awaitable[RunningEngine]]

HOT_TABLE_STATS = """
SELECT vacuum_count, autovacuum_count, n_dead_tup
  FROM pg_stat_user_tables WHERE relid = 'webhooks.deliveries'::regclass
"""


async def _stats(conn: asyncpg.Connection) -> asyncpg.Record:
    row = await conn.fetchrow(HOT_TABLE_STATS)
    assert row is not None
    return row


async def _no_autovacuum(conn: asyncpg.Connection) -> None:
    await conn.execute("ALTER TABLE webhooks.deliveries SET (autovacuum_enabled = false)")


async def _primary_key_entries(conn: asyncpg.Connection) -> int:
    """Entries in the leaf pages of the hot table's primary key, counted by reading the pages.

    A delivered row's entries stay there until a vacuum removes them (page pruning frees the heap
    tuple, not its index entries), which is what the engine vacuums for."""
    await conn.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
    count = await conn.fetchval(
        """
        SELECT coalesce(sum(s.live_items + s.dead_items - (s.btpo_next <> 0)::integer), 0)
          FROM generate_series(1, pg_relation_size('webhooks.deliveries_pkey')
                                  / current_setting('block_size')::integer - 1) AS b(blkno),
               LATERAL bt_page_stats('webhooks.deliveries_pkey', b.blkno) AS s
         WHERE s.btpo_level = 0 AND s.type IN ('l', 'r')
        """
    )
    return int(count)


async def _delivered_by_engine(
    conn: asyncpg.Connection,
    receiver: Receiver,
    start_engine: StartEngine,
    *,
    endpoints: int,
    per_endpoint: int,
    **settings: float,
) -> tuple[Load, IdleVacuum]:
    """Emit a load, run an engine with ``settings`` until all of it is delivered; the engine
    keeps running (the fixture stops it), and its idle vacuum is returned."""
    load = await make_load(conn, receiver, endpoints=endpoints, events_per_endpoint=per_endpoint)
    running = await start_engine(**settings)
    await wait_until(
        lambda: _equals(delivered(conn), load.total), timeout_s=60, what="all delivered"
    )
    assert running.engine.vacuum is not None
    return load, running.engine.vacuum


async def test_engine_vacuums_the_hot_table_when_idle_after_a_burst(
    conn: asyncpg.Connection, receiver: Receiver, open_policy: None, start_engine: StartEngine
) -> None:
    """400 deliveries leave more dead rows than the threshold of 300: once they are all done and
    the engine is idle, it vacuums, and the dead rows are gone."""
    await _no_autovacuum(conn)
    before = await _stats(conn)
    with structlog.testing.capture_logs() as logged:
        _, vacuum = await _delivered_by_engine(
            conn, receiver, start_engine, endpoints=10, per_endpoint=40,
            vacuum_dead_rows=300, vacuum_check_s=0.2,
        )  # fmt: skip

        async def vacuumed() -> bool:
            return vacuum.vacuums >= 1

        await wait_until(vacuumed, timeout_s=30, what="the engine's vacuum")
    after = await _stats(conn)
    assert after["vacuum_count"] > before["vacuum_count"]
    assert after["autovacuum_count"] == before["autovacuum_count"]
    # The deliveries' index entries went with the vacuum; the test below keeps them without one.
    assert await _primary_key_entries(conn) < 40
    done = [e for e in logged if e["event"] == "hot_table_vacuumed"]
    assert len(done) == 1, done
    assert done[0]["dead_rows"] >= 300, done


async def test_engine_leaves_the_hot_table_alone_below_the_threshold(
    conn: asyncpg.Connection, receiver: Receiver, open_policy: None, start_engine: StartEngine
) -> None:
    """150 deliveries are counted by the engine's checks but stay under the threshold of 10,000:
    no vacuum, however often the engine idles."""
    await _no_autovacuum(conn)
    before = await _stats(conn)
    load, vacuum = await _delivered_by_engine(
        conn, receiver, start_engine, endpoints=10, per_endpoint=15,
        vacuum_dead_rows=10_000, vacuum_check_s=0.1,
    )  # fmt: skip

    async def counted() -> bool:
        return vacuum.last_dead >= load.total

    await wait_until(counted, timeout_s=30, what="a check that saw the delivered rows dead")
    assert vacuum.checks >= 2
    assert vacuum.vacuums == 0
    assert (await _stats(conn))["vacuum_count"] == before["vacuum_count"]
    # Every delivery's entries are still there. 150 rows keep them in one leaf page: Postgres
    # deletes dead entries early only from a page about to split.
    assert await _primary_key_entries(conn) >= load.total


async def test_engine_with_vacuum_dead_rows_0_never_looks(
    conn: asyncpg.Connection, receiver: Receiver, open_policy: None, start_engine: StartEngine
) -> None:
    """0 leaves the table to autovacuum: the engine has no vacuum task and reads no statistics."""
    _, vacuum = await _delivered_by_engine(
        conn, receiver, start_engine, endpoints=2, per_endpoint=5,
        vacuum_dead_rows=0, vacuum_check_s=0.1,
    )  # fmt: skip
    assert vacuum.checks == 0
    assert not any(t.get_name() == "idle-vacuum" for t in asyncio.all_tasks())


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected
