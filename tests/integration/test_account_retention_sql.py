"""Per-account retention: set_account_retention's checks and the maintenance task's batched purge,
with another account's equally old rows beside it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from engine.db.store import Store
from engine.delivery.housekeeping import maintain_partitions
from tests.support.db import error_of
from tests.support.factories import attempt, emit

DAY = timedelta(days=1)
MINUTE = timedelta(minutes=1)


# Per table: the column naming the event, and the times that move with it.
AGED_COLUMNS = {
    "events": ("id", ("created_at",)),
    "deliveries": ("event_id", ("event_created_at", "created_at")),
    "delivery_outcomes": ("event_id", ("event_created_at", "created_at", "ended_at")),
    "attempts": ("event_id", ("started_at",)),
    "idempotency_keys": ("event_id", ("created_at",)),
}


async def age(conn: asyncpg.Connection, event_id: int, by: timedelta) -> None:
    """Move an event and all of its deliveries ``by`` into the past (rows change partition)."""
    for table, (key, times) in AGED_COLUMNS.items():
        moves = ", ".join(f"{t} = {t} - $2::interval" for t in times)
        await conn.execute(f"UPDATE webhooks.{table} SET {moves} WHERE {key} = $1", event_id, by)


@dataclass(frozen=True)
class Aged:
    old: int  # acct_1, delivered, just older than a day
    young: int  # acct_1, delivered, just younger than a day
    old_live: int  # acct_1, just older than a day, delivered to b, pending for a
    other: int  # acct_2, delivered, as old as ``old``


async def counts(conn: asyncpg.Connection, event_id: int) -> dict[str, int]:
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM webhooks.events WHERE id = $1) AS events,"
        " (SELECT count(*) FROM webhooks.delivery_outcomes WHERE event_id = $1) AS outcomes,"
        " (SELECT count(*) FROM webhooks.attempts WHERE event_id = $1) AS attempts,"
        " (SELECT count(*) FROM webhooks.deliveries WHERE event_id = $1) AS live,"
        " (SELECT count(*) FROM webhooks.idempotency_keys WHERE event_id = $1) AS keys",
        event_id,
    )
    assert row is not None
    return dict(row)


@pytest.fixture
async def aged(store: Store, conn: asyncpg.Connection) -> Aged:
    await conn.execute("UPDATE webhooks.settings SET retry_schedule = '{1 hour}', retry_jitter = 0")
    a, _ = await store.create_endpoint("acct_1", "https://a.example.com/hook")
    b, _ = await store.create_endpoint("acct_1", "https://b.example.com/hook")
    c, _ = await store.create_endpoint("acct_2", "https://c.example.com/hook")
    ids: list[int] = []
    for account, key in (("acct_1", "k-old"), ("acct_1", "k-young"), ("acct_2", "k-other")):
        event_id = await conn.fetchval(
            "SELECT webhooks.emit($1, 'email.sent', '{\"n\": 1}', $2)", account, key
        )
        ids.append(event_id)
    await attempt(store, a, 500)  # a fails once: its deliveries wait an hour, two attempts each
    await attempt(store, b, 200)
    await attempt(store, c, 200)
    old_live = await emit(conn, "acct_1")
    await attempt(store, b, 200)  # old_live is delivered to b, still pending for a
    old, young, other = ids
    # a's retries of old and young succeed too, so that only old_live has a live delivery.
    await conn.execute("UPDATE webhooks.deliveries SET due_at = now() - interval '1 s'")
    await conn.execute(
        "UPDATE webhooks.deliveries SET ready = true WHERE event_id = ANY ($1)", [old, young]
    )
    await attempt(store, a, 200, count=2)
    for event_id in (old, old_live, other):
        await age(conn, event_id, DAY + MINUTE)
    await age(conn, young, DAY - MINUTE)
    return Aged(old, young, old_live, other)


async def test_purge_deletes_only_that_accounts_rows_past_its_retention_in_batches(
    conn: asyncpg.Connection, aged: Aged
) -> None:
    """With acct_1 at one day, batches of one delete the event, ended deliveries, attempts and
    idempotency key a minute past it; what is a minute younger, what a live delivery still needs,
    and acct_2's rows as old stay."""
    before = {e: await counts(conn, e) for e in (aged.old, aged.young, aged.old_live, aged.other)}
    assert before[aged.old] == {"events": 1, "outcomes": 2, "attempts": 3, "live": 0, "keys": 1}
    assert before[aged.old_live]["live"] == 1
    await conn.execute("SELECT webhooks.set_account_retention('acct_1', '1 day')")

    calls: list[int] = []
    while deleted := await conn.fetchval("SELECT webhooks.purge_account_retention_v1(1)"):
        calls.append(deleted)
    # One outcome per call, with its attempts, its event when no delivery is left, and one key.
    assert len(calls) >= 3
    # old: 2 outcomes, 3 attempts, its event and key; old_live: b's outcome and attempt.
    assert sum(calls) == (2 + 3 + 1 + 1) + (1 + 1)
    assert await counts(conn, aged.old) == dict.fromkeys(before[aged.old], 0)
    assert await counts(conn, aged.old_live) == {
        "events": 1,  # its delivery to a is live
        "outcomes": 0,
        "attempts": 0,  # b's went with b's outcome; a's delivery was never tried
        "live": 1,
        "keys": 0,
    }
    assert await counts(conn, aged.young) == before[aged.young]
    assert await counts(conn, aged.other) == before[aged.other]


async def test_the_maintenance_task_enforces_it_and_the_global_retention_applies_when_shorter(
    store: Store, conn: asyncpg.Connection, aged: Aged
) -> None:
    """maintain_partitions runs the purge to the end; an account's retention longer than a global
    retention lowered later does not keep rows: the shorter applies."""
    await store.set_account_retention("acct_1", DAY + 2 * MINUTE)
    await maintain_partitions(store)
    assert (await counts(conn, aged.old))["events"] == 1  # a minute inside its retention
    await conn.execute("UPDATE webhooks.settings SET retention = '1 day'")
    await maintain_partitions(store)
    assert await counts(conn, aged.old) == dict.fromkeys(await counts(conn, aged.old), 0)
    assert (await counts(conn, aged.young))["events"] == 1
    assert (await counts(conn, aged.other))["events"] == 1  # acct_2 follows the global alone


@pytest.mark.parametrize(
    ("retention", "message"),
    [
        ("0", "retention: must be positive, got 00:00:00"),
        ("-1 day", "retention: must be positive, got -1 days"),
        ("30 days", "retention: 30 days is not shorter than the global retention 30 days"),
        ("31 days", "retention: 31 days is not shorter than the global retention 30 days"),
    ],
)
async def test_set_account_retention_refuses_what_is_not_shorter_or_not_positive(
    tx: asyncpg.Connection, retention: str, message: str
) -> None:
    """Zero, negative, equal to and longer than the global retention are refused (WH001) naming
    both values; nothing is stored."""
    exc = await error_of(
        tx, tx.execute(f"SELECT webhooks.set_account_retention('acct_1', '{retention}')")
    )
    assert exc.sqlstate == "WH001"
    assert str(exc).startswith(message)
    assert await tx.fetchval("SELECT count(*) FROM webhooks.account_retention") == 0


async def test_set_account_retention_accepts_just_shorter_and_null_removes_it(
    tx: asyncpg.Connection,
) -> None:
    """A second under the global retention and a second above zero are kept (the last one set
    wins); NULL removes the account's own retention."""

    async def stored() -> Any:
        return await tx.fetchval(
            "SELECT retention::text FROM webhooks.account_retention WHERE account_id = 'acct_1'"
        )

    await tx.execute("SELECT webhooks.set_account_retention('acct_1', '29 days 23:59:59')")
    assert await stored() == "29 days 23:59:59"
    await tx.execute("SELECT webhooks.set_account_retention('acct_1', '1 second')")
    assert await stored() == "00:00:01"
    await tx.execute("SELECT webhooks.set_account_retention('acct_1', NULL)")
    assert await stored() is None
    exc = await error_of(tx, tx.execute("SELECT webhooks.set_account_retention('', '1 day')"))
    assert str(exc).startswith("account_id: must not be empty")


async def test_the_purge_reaches_rows_whose_outcomes_the_global_retention_drops(
    store: Store, conn: asyncpg.Connection, aged: Aged
) -> None:
    """acct_1's old event sits in a day partition wholly past a global retention of two days, and
    old_live's live delivery keeps that day's events. The global upkeep drops the day's outcomes,
    through which the purge finds an account's rows; with acct_1's one-day retention purged first,
    old goes all the same, while acct_2's other, which only the global retention governs, stays
    with its day (and loses its outcome). With the upkeep first, old stayed as other does."""
    day = await conn.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date - 3")
    start, end = (f"webhooks.partition_bound('{day}'::date + {n})" for n in (0, 1))
    for parent in ("events", "attempts", "delivery_outcomes"):
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS webhooks.{parent}_p{day:%Y%m%d} PARTITION OF"
            f" webhooks.{parent} FOR VALUES FROM ({start}) TO ({end})"
        )
    # From a day and a minute old to noon (UTC) of that day: the three move together.
    by = await conn.fetchval(
        "SELECT created_at - (webhooks.partition_bound($2) + interval '12 hours')"
        " FROM webhooks.events WHERE id = $1",
        aged.old,
        day,
    )
    for event_id in (aged.old, aged.old_live, aged.other):
        await age(conn, event_id, by)
    in_the_day = await conn.fetchval(
        "SELECT count(*) FROM webhooks.delivery_outcomes WHERE event_id = ANY ($1)"
        f" AND tableoid = 'webhooks.delivery_outcomes_p{day:%Y%m%d}'::regclass",
        [aged.old, aged.other],
    )
    assert in_the_day == 3  # old's two and other's one, in the day's own partition
    await conn.execute("UPDATE webhooks.settings SET retention = '2 days'")
    await store.set_account_retention("acct_1", DAY)

    await maintain_partitions(store)

    assert await counts(conn, aged.old) == dict.fromkeys(await counts(conn, aged.old), 0)
    dropped = await conn.fetchval(
        "SELECT to_regclass($1)", f"webhooks.delivery_outcomes_p{day:%Y%m%d}"
    )
    assert dropped is None
    assert await counts(conn, aged.other) == {
        "events": 1,
        "outcomes": 0,
        "attempts": 1,
        "live": 0,
        "keys": 0,  # keys: by their age
    }
    assert (await counts(conn, aged.old_live))["live"] == 1
