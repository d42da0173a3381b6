"""S: what the SQL functions cost Postgres, as server CPU per call from one connection.

W6 measures the app's commits/s with 16 connections, which mixes the server's cost with the load
generator's and with how the two cores are shared. This workload isolates the server's part: one
connection of ours, whose backend's CPU time (``/proc/PID/stat``, so the server must run on this
machine) is read before and after a run of calls.

- App commits, one single-row INSERT per transaction into ``app.email_events`` for accounts
  without endpoints: with no trigger (the baseline), with the example trigger (guarded by
  ``webhooks.subscribed``), with the same trigger calling ``webhooks.emit`` unguarded, and with a
  trigger that does nothing (Postgres's cost of firing a row trigger at all).
- The same single-row commits for accounts with one endpoint each (subscribed): with the example
  trigger, which stores the event through ``webhooks.emit``, and with the lean outbox of
  bench.outbox, the baseline issue 15 holds emit to.
- Bulk: 1,000-row INSERT statements, server CPU per row: with no trigger, with the example row
  trigger (one emit per row) and with the statement-level trigger of bench.outbox (one
  ``webhooks.emit_many`` per statement), for subscribed accounts and for accounts without
  endpoints. The emitting share is each trigger's time over the plain insert's. Beside them, the
  bulk trigger's two floors from bench.outbox (the intake rows alone; with the guard and the
  size and depth checks), which bound the share ratio any ``emit_many`` could reach.
- Results: ``webhooks.claim_v2`` claiming in batches of 180 (W1's mean), per delivery, each batch
  then recorded as 2xx results by ``webhooks.record_attempts_v1`` in batches of 100 (the engine's
  common case), per result. A claim leases no more than an endpoint's ``max_in_flight`` (its
  leases count across engines), so each batch is recorded before the next claim, and the
  endpoints' limit is raised for the run so that a claim can fill its batch. No engine runs
  meanwhile.
"""

from __future__ import annotations

import statistics
from datetime import UTC, datetime

import asyncpg

from bench.cpu import cpu_seconds
from bench.delivery import ACCOUNTS
from bench.harness import BenchError
from bench.outbox import (
    BULK_FLOOR,
    BULK_FLOOR_CHECKED,
    BULK_TRIGGER,
    CLEAR_LEAN,
    CREATE_STATEMENT_TRIGGER,
    LEAN_OUTBOX,
    LEAN_TRIGGER,
    STATEMENT_TRIGGERS,
)
from bench.payloads import app_row
from bench.producer import BENCH_TRIGGERS, CREATE_TRIGGER, DROP_TRIGGER
from bench.report import Row
from bench.suite import DB_TIMEOUT_S, INSERT_ROW, Suite, progress
from engine.models import DEFAULT_MAX_IN_FLIGHT

SUBSCRIBED = "acct_"  # the suite's accounts acct_0..19, one endpoint each
NOBODY = "sql_costs_nobody_"
# (trigger, accounts): no trigger (the baseline), the example trigger, the example trigger without
# its guard, a trigger that does nothing, all for accounts without endpoints; then the example
# trigger and the lean outbox for subscribed accounts.
TRIGGERS: tuple[tuple[str | None, str], ...] = (
    (None, NOBODY),
    ("email_event_webhook", NOBODY),
    ("email_event_webhook_unguarded", NOBODY),
    ("email_event_webhook_empty", NOBODY),
    ("email_event_webhook", SUBSCRIBED),
    (LEAN_TRIGGER, SUBSCRIBED),
)
BULK_ROWS = 1000
BULK_STATEMENTS = 40  # per variant and round: 40,000 rows, so a 10 ms CPU tick is 0.25 us per row
# The bulk variants' rounds: more than the commits' ROUNDS, as a bulk variant's round is short
# (about a second) and the machine's drift moves single rounds by a fifth.
BULK_ROUNDS = 9
# (trigger, accounts) of the bulk inserts; those in STATEMENT_TRIGGERS are statement-level.
BULK_VARIANTS: tuple[tuple[str | None, str], ...] = (
    (None, SUBSCRIBED),
    ("email_event_webhook", SUBSCRIBED),
    (BULK_TRIGGER, SUBSCRIBED),
    ("email_event_webhook", NOBODY),
    (BULK_TRIGGER, NOBODY),
    (BULK_FLOOR, SUBSCRIBED),
    (BULK_FLOOR_CHECKED, SUBSCRIBED),
)
BULK_INSERT = """
INSERT INTO app.email_events (account_id, kind, recipient, campaign_id, details)
SELECT $1 || (g % 20), 'sent', 'user' || g || '@example.test', 'cmp_000001', $2::jsonb
  FROM generate_series(1, $3) AS g"""
ROUNDS = 5
WARM_UP = 200
CLAIM_BATCH = 180
RECORD_BATCH = 100
RECORD = (
    "SELECT outcome FROM webhooks.record_attempts_v1($1::bigint[], $2::uuid[],"
    " $3::timestamptz[], $4::integer[], $5::integer[], $6::text[], $7::text[], $8::text[],"
    " $9::double precision[])"
)
CLAIM = "SELECT delivery_id, lease_token FROM webhooks.claim_v2('{}', '{}', 1000000, $1)"
# Enough leases per endpoint for a claim of CLAIM_BATCH over the endpoints EMIT_SUBSCRIBED feeds
# (the bench's, created with the default limit, which is put back after).
SET_MAX_IN_FLIGHT = "UPDATE webhooks.endpoints SET max_in_flight = $1 WHERE account_id = ANY ($2)"
CLAIM_MAX_IN_FLIGHT = 256
EMIT_SUBSCRIBED = """
SELECT count(webhooks.emit('acct_' || (g % 20), 'email.sent',
                           jsonb_build_object('n', g, 'padding', repeat('x', 1000))))
  FROM generate_series(1, $1) AS g"""


def _backend_cpu_s(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except OSError as exc:
        raise BenchError(
            f"cannot read the CPU time of backend {pid}: the S workload needs Postgres on this"
            " machine"
        ) from exc


async def sql_costs(suite: Suite, commits: int, results: int) -> None:
    conn = await asyncpg.connect(suite.url, timeout=DB_TIMEOUT_S)
    try:
        await conn.execute("SET synchronous_commit = off")  # CPU, not the disk's flush time
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        await suite.conn.execute(BENCH_TRIGGERS)
        await suite.conn.execute(LEAN_OUTBOX)
        try:
            none, guarded, bare, empty, subscribed, lean = await _commit_costs(
                suite, conn, pid, commits
            )
            bulk = await _bulk_costs(suite, conn, pid)
        finally:
            await suite.conn.execute(DROP_TRIGGER)
            await suite.conn.execute(CREATE_TRIGGER.format(function="email_event_webhook"))
        claim_us, record_us = await _results(suite, conn, pid, results)
    finally:
        await conn.close()
    suite.add(
        Row("S  app commit, no trigger (1 connection)", none, "us CPU", 1.0, "S none"),
        Row("S  app commit, example trigger, no subscriber", guarded, "us CPU", guarded / none,
            "S none"),
        Row("S  app commit, trigger without the guard", bare, "us CPU", bare / none, "S none"),
        Row("S  app commit, trigger that does nothing", empty, "us CPU", empty / none, "S none"),
        Row("S  app commit, example trigger, subscribed (1 endpoint)", subscribed, "us CPU",
            subscribed / none, "S none"),
        Row("S  app commit, lean outbox, subscribed", lean, "us CPU", lean / none, "S none"),
        Row("S    example trigger over lean outbox, subscribed (over no trigger)",
            (subscribed - none) / (lean - none) if lean > none else 0.0, "", decimals=2),
        *_bulk_rows(bulk),
        Row("S  claim_v2, batches of 180", claim_us, "us CPU/delivery"),
        Row("S  record_attempts_v1, 2xx, batches of 100", record_us, "us CPU/result"),
    )  # fmt: skip


async def _commit_costs(
    suite: Suite, conn: asyncpg.Connection, pid: int, count: int
) -> tuple[float, ...]:
    """Server CPU µs per commit for each of TRIGGERS, the median of ROUNDS interleaved runs: on a
    shared machine the CPU a backend is charged for the same work drifts by a fifth over a minute,
    and interleaving spreads that drift over every variant alike."""
    progress(f"S: {count:,} app commits per trigger variant, in {ROUNDS} interleaved rounds")
    await _clear(suite)
    costs: list[list[float]] = [[] for _ in TRIGGERS]
    for _ in range(ROUNDS):
        for variant, (trigger, accounts) in enumerate(TRIGGERS):
            rows = [app_row(i, f"{accounts}{i % 20}") for i in range(100)]
            await suite.conn.execute(DROP_TRIGGER)
            if trigger is not None:
                await suite.conn.execute(CREATE_TRIGGER.format(function=trigger))
            # Prepared after the DDL: asyncpg's prepare leaves its Parse's lock on the table held
            # until the next Sync, which DDL from another connection would wait for forever.
            statement = await conn.prepare(INSERT_ROW)
            for i in range(WARM_UP):  # plans cached, trigger compiled
                await statement.fetch(*rows[i % len(rows)])
            before = _backend_cpu_s(pid)
            for i in range(count // ROUNDS):
                await statement.fetch(*rows[i % len(rows)])
            costs[variant].append((_backend_cpu_s(pid) - before) * 1e6 / (count // ROUNDS))
        await _clear(suite)
    return tuple(statistics.median(c) for c in costs)


async def _clear(suite: Suite) -> None:
    await suite.clear()
    await suite.conn.execute(CLEAR_LEAN)


async def _bulk_costs(suite: Suite, conn: asyncpg.Connection, pid: int) -> list[list[float]]:
    """Server CPU µs per row of 1,000-row inserts for each of BULK_VARIANTS, in each of
    BULK_ROUNDS interleaved rounds."""
    progress(
        f"S: {BULK_STATEMENTS} inserts of {BULK_ROWS:,} rows per bulk variant and round,"
        f" {BULK_ROUNDS} interleaved rounds"
    )
    details = app_row(0, SUBSCRIBED)[3]
    costs: list[list[float]] = [[] for _ in BULK_VARIANTS]
    for _ in range(BULK_ROUNDS):
        for variant, (trigger, accounts) in enumerate(BULK_VARIANTS):
            await suite.conn.execute(DROP_TRIGGER)
            if trigger in STATEMENT_TRIGGERS:
                await suite.conn.execute(CREATE_STATEMENT_TRIGGER.format(function=trigger))
            elif trigger is not None:
                await suite.conn.execute(CREATE_TRIGGER.format(function=trigger))
            statement = await conn.prepare(BULK_INSERT)  # after the DDL, see _commit_costs
            await statement.fetch(accounts, details, BULK_ROWS)  # plans cached, trigger compiled
            before = _backend_cpu_s(pid)
            for _ in range(BULK_STATEMENTS):
                await statement.fetch(accounts, details, BULK_ROWS)
            costs[variant].append(
                (_backend_cpu_s(pid) - before) * 1e6 / (BULK_STATEMENTS * BULK_ROWS)
            )
            await _clear(suite)
    return costs


def _bulk_rows(rounds: list[list[float]]) -> list[Row]:
    """The bulk figures, per row, from each variant's rounds (in BULK_VARIANTS' order): medians,
    and the share ratio's spread over the rounds. A trigger's share is its time over the plain
    insert's."""
    unit = "us CPU/row"
    plain, row, bulk, row_nobody, bulk_nobody, floor, floor_checked = (
        statistics.median(r) for r in rounds
    )
    row_share = row - plain

    def share_ratio(trigger: float) -> float:
        return row_share / (trigger - plain) if trigger > plain else float("inf")

    ratio, best = share_ratio(bulk), share_ratio(floor_checked)
    # The plain insert, the row trigger and the statement trigger ran one after the other in each
    # round: each round's ratio is a paired comparison, and their spread is the noise the median
    # carries on this shared machine.
    ratio_rounds = [
        (r - p) / (b - p) if b > p else float("inf")
        for p, r, b in zip(rounds[0], rounds[1], rounds[2], strict=True)
    ]
    rows = f"{BULK_ROWS:,}-row inserts"
    return [
        Row(f"S  bulk: {rows}, no trigger", plain, unit, 1.0, "S bulk none"),
        Row("S  bulk: row trigger (emit per row), subscribed", row, unit, row / plain,
            "S bulk none"),
        Row("S  bulk: statement trigger (emit_many), subscribed", bulk, unit, bulk / plain,
            "S bulk none"),
        Row("S    bulk: row trigger's share / statement trigger's share", ratio, "",
            ratio, "statement trigger", "ratio >= 3", ratio >= 3, decimals=2),
        Row(f"S    bulk: share ratio in each of the {BULK_ROUNDS} rounds: lowest",
            min(ratio_rounds), f"highest {max(ratio_rounds):.2f}", decimals=2),
        Row("S    bulk: row trigger / statement trigger, whole insert", row / bulk, "",
            row / bulk, "statement trigger", decimals=2),
        Row("S  bulk: row trigger, no subscriber", row_nobody, unit, row_nobody / plain,
            "S bulk none"),
        Row("S  bulk: statement trigger, no subscriber", bulk_nobody, unit,
            bulk_nobody / plain, "S bulk none"),
        Row("S  bulk floor: payloads and intake rows, no emit_many", floor, unit,
            floor / plain, "S bulk none"),
        Row("S  bulk floor: + guard, size and depth checks, no emit_many", floor_checked, unit,
            floor_checked / plain, "S bulk none"),
        Row("S    bulk: row trigger's share / the checked floor's (emit_many at no cost)", best,
            "", best, "checked floor", decimals=2),
    ]  # fmt: skip


async def _results(
    suite: Suite, conn: asyncpg.Connection, pid: int, count: int
) -> tuple[float, float]:
    """Server CPU µs per delivery claimed, then per 2xx result recorded."""
    progress(f"S: {count:,} deliveries claimed, then recorded as 2xx")
    await suite.clear()
    await conn.fetchval(EMIT_SUBSCRIBED, count, timeout=DB_TIMEOUT_S)
    await conn.execute("VACUUM ANALYZE webhooks.deliveries")
    await conn.execute(SET_MAX_IN_FLIGHT, CLAIM_MAX_IN_FLIGHT, ACCOUNTS)
    claim_s = record_s = 0.0
    claimed = 0
    try:
        while claimed < count:
            before = _backend_cpu_s(pid)
            batch = await conn.fetch(CLAIM, CLAIM_BATCH)
            claim_s += _backend_cpu_s(pid) - before
            if not batch:
                raise BenchError(f"claimed {claimed} of {count} deliveries, then nothing")
            claimed += len(batch)
            before = _backend_cpu_s(pid)
            await _record(conn, batch)
            record_s += _backend_cpu_s(pid) - before
    finally:
        await conn.execute(SET_MAX_IN_FLIGHT, DEFAULT_MAX_IN_FLIGHT, ACCOUNTS)
    await suite.clear()
    return claim_s * 1e6 / claimed, record_s * 1e6 / claimed


async def _record(conn: asyncpg.Connection, claimed: list[asyncpg.Record]) -> None:
    """Record every claimed delivery as a 2xx, RECORD_BATCH results per call."""
    now = datetime.now(UTC)
    for start in range(0, len(claimed), RECORD_BATCH):
        part = claimed[start : start + RECORD_BATCH]
        n = len(part)
        outcomes = await conn.fetch(
            RECORD, [r["delivery_id"] for r in part], [r["lease_token"] for r in part],
            [now] * n, [3] * n, [200] * n, [None] * n, [None] * n, ["ok"] * n, [None] * n,
        )  # fmt: skip
        if any(o["outcome"] != "delivered" for o in outcomes):
            raise BenchError(f"record_attempts_v1 did not deliver: {outcomes}")
