"""Migration 0004 (the ready set) upgrades a live database with deliveries in every state.

The previous release is rebuilt from the release tree (tests/support/previous_release.py, the
release that shipped 0004 and 0005): migrations up to 0003, with the claim and record function
files as they were then (``sql_before_0004/``, copied from the release before the
ready set) and emit as it was until 0005. Rows are put in every state through those old functions,
then the database is migrated, and the new bodies must claim and record them correctly, including
results under leases taken before the migration. An engine of the previous version calls the same
function names, so after ``migrate`` it runs the new bodies; between the migration's commit and the
re-applied function files it still runs the old ones, which the second test covers.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import UUID

import asyncpg
import pytest

from engine.db.migrate import migrate
from engine.db.store import Store
from engine.models import Delivery, EndpointOptions, Ordering
from tests.support.factories import outcome
from tests.support.previous_release import PreviousReleaseStore, release_tree

PREVIOUS = Path(__file__).parent / "sql_before_0004"
# emit did not change from before 0004 until 0005, whose column it reads.
PREVIOUS_EMIT = Path(__file__).parent / "sql_before_0005" / "30_emit.sql"
PREVIOUS_FILES = [*PREVIOUS.iterdir(), PREVIOUS_EMIT]
READY_SET = "0004_ready_set.sql"


def tree(root: Path, *, with_ready_set: bool) -> Path:
    """A copy of the shipped sql/ tree with the previous release's claim and record functions,
    and migration 0004 (and any later one) only if asked for."""
    release_tree(root)
    for path in (root / "migrations").iterdir():
        if int(path.name[:4]) >= 4 and not (with_ready_set and path.name == READY_SET):
            path.unlink()
    for path in PREVIOUS_FILES:
        shutil.copy(path, root / "functions" / path.name)
    return root


@pytest.fixture
async def old_db(empty_db_url: str, tmp_path: Path) -> AsyncIterator[asyncpg.Connection]:
    """A database migrated by the release before the ready set."""
    conn = await asyncpg.connect(empty_db_url)
    try:
        await migrate(conn, root=tree(tmp_path / "old", with_ready_set=False))
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'webhooks'"
                " AND table_name = 'deliveries' AND column_name = 'ready'"
            )
            == 0
        )
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def store(empty_db_url: str, old_db: asyncpg.Connection) -> AsyncIterator[Store]:
    """A Store on the upgraded database, as a running engine uses it (its queries call the
    functions by name, whatever bodies they have at the time)."""
    pool = await asyncpg.create_pool(empty_db_url, min_size=1, max_size=2)
    try:
        yield PreviousReleaseStore(pool)
    finally:
        await pool.close()


async def endpoint(store: Store, account_id: str, ordering: str = "dispatch") -> UUID:
    endpoint_id, _ = await store.create_endpoint(
        account_id,
        "https://example.com/hook",
        EndpointOptions(event_types=("*",), ordering=Ordering(ordering)),
    )
    return endpoint_id


async def emit(conn: asyncpg.Connection, account_id: str) -> int:
    await conn.execute("SELECT webhooks.emit($1, 'email.sent', '{}')", account_id)
    delivery_id: int = await conn.fetchval("SELECT max(id) FROM webhooks.deliveries")
    return delivery_id


async def lease(store: Store, delivery_id: int) -> Delivery:
    """Claim until the given delivery is leased (the claim takes other due rows too)."""
    for delivery, _ in await store.claim({}, default_room=8, max_rows=100):
        if delivery.id == delivery_id:
            return delivery
    raise AssertionError(f"delivery {delivery_id} was not claimed")


async def make_due(conn: asyncpg.Connection, delivery_id: int) -> None:
    await conn.execute(
        "UPDATE webhooks.deliveries SET due_at = now() - interval '1 second' WHERE id = $1",
        delivery_id,
    )


async def ready(conn: asyncpg.Connection) -> dict[int, bool]:
    rows = await conn.fetch("SELECT id, ready FROM webhooks.deliveries")
    return {r["id"]: r["ready"] for r in rows}


async def test_migration_classifies_live_rows_and_new_bodies_carry_on(
    store: Store, old_db: asyncpg.Connection, tmp_path: Path
) -> None:
    """Pending, due-retry and expired-lease rows become ready; running leases and waiting retries
    do not. The new claim then takes exactly the ready ones, and results under leases taken
    before the migration are recorded (or found stale when the lease expired and was taken over)."""
    conn = old_db
    for account in ("a_pending", "a_leased", "a_waiting", "a_due_retry", "a_expired"):
        await endpoint(store, account)
    running = await lease(store, await emit(conn, "a_leased"))
    waiting = await lease(store, await emit(conn, "a_waiting"))
    due_retry = await lease(store, await emit(conn, "a_due_retry"))
    expired = await lease(store, await emit(conn, "a_expired"))
    recorded = await store.record([outcome(waiting, 500), outcome(due_retry, 503)])
    assert [r.outcome for r in recorded] == ["retry", "retry"]
    await make_due(conn, due_retry.id)
    await make_due(conn, expired.id)
    pending = await emit(conn, "a_pending")

    report = await migrate(conn, root=release_tree(tmp_path / "release"))
    assert report.applied[0] == READY_SET  # and the migrations after it
    assert set(report.functions) == {p.name for p in PREVIOUS_FILES}

    assert await ready(conn) == {
        pending: True,
        running.id: False,
        waiting.id: False,
        due_retry.id: True,
        expired.id: True,
    }
    claimed = {d.id: d for d, _ in await store.claim({}, default_room=8, max_rows=100)}
    assert sorted(claimed) == sorted([pending, due_retry.id, expired.id])
    assert claimed[due_retry.id].attempt == 2
    assert claimed[expired.id].lease != expired.lease
    assert await store.claim({}, default_room=8, max_rows=100) == []

    outcomes = await store.record(
        [outcome(running, 200), outcome(expired, 200), outcome(claimed[pending], 500)]
    )
    assert [(r.delivery_id, r.outcome) for r in outcomes] == [
        (running.id, "delivered"),
        (expired.id, "stale"),
        (pending, "retry"),
    ]
    await make_due(conn, waiting.id)
    [(again, _)] = await store.claim({}, default_room=8, max_rows=100)
    assert (again.id, again.attempt) == (waiting.id, 2)


async def test_old_bodies_between_migration_and_function_files_lease_nothing_twice(
    store: Store, old_db: asyncpg.Connection, tmp_path: Path
) -> None:
    """Between migration 0004's commit and the re-applied function files, a running engine still
    calls the old bodies on the new schema: its claim leases without clearing ready, its release
    and retries leave ready as it was. The new claim takes none of those leases again, takes the
    released row at once, and the new record accepts results under the old leases."""
    conn = old_db
    await endpoint(store, "a")
    await endpoint(store, "s", ordering="strict")
    before = await lease(store, await emit(conn, "a"))
    retried = await lease(store, await emit(conn, "a"))

    report = await migrate(conn, root=tree(tmp_path / "window", with_ready_set=True))
    assert report.applied == [READY_SET]
    assert report.functions == []
    in_window = await lease(store, await emit(conn, "a"))
    strict_head = await lease(store, await emit(conn, "s"))
    strict_next = await emit(conn, "s")
    assert await store.release([before]) == 1
    [recorded] = await store.record([outcome(retried, 500)])
    assert recorded.outcome == "retry"
    assert (await ready(conn))[in_window.id] is True  # the old claim did not clear it

    report = await migrate(conn, root=release_tree(tmp_path / "release"))
    assert set(report.functions) == {p.name for p in PREVIOUS_FILES}
    claimed = [d for d, _ in await store.claim({}, default_room=8, max_rows=100)]
    assert [d.id for d in claimed] == [before.id]
    assert strict_next not in [d.id for d in claimed]
    outcomes = await store.record([outcome(in_window, 200), outcome(strict_head, 200)])
    assert [r.outcome for r in outcomes] == ["delivered", "delivered"]
    [(next_, _)] = await store.claim({}, default_room=8, max_rows=100)
    assert next_.id == strict_next
    await make_due(conn, retried.id)
    [(again, _)] = await store.claim({}, default_room=8, max_rows=100)
    assert again.id == retried.id
