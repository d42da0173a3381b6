"""Each policy column of webhooks.settings, set away from its default and on both sides of the
boundary it draws, so that a function reading a literal (or a neighbouring value) instead of the
setting fails a test here.

The columns tested elsewhere, on both sides: ``max_payload_bytes`` (test_emit_sql's
test_payload_over_the_limit_is_refused), ``allow_http`` for endpoint URLs (test_endpoints_sql's
test_create_allows_http_only_when_settings_allow_it) and ``allow_private_networks`` (the e2e tests
run with it on; test_faults_security's guard tests with it off). Clock-dependent states are set
with raw SQL rather than waited for; each call that computes from now() runs in a transaction
whose now() the test reads.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from tests.support.db import sql_endpoint

CLAIM_SQL = "SELECT * FROM webhooks.claim_v2('{}'::uuid[], '{}'::integer[], $1, $1)"
RECORD_SQL = """
SELECT * FROM webhooks.record_attempts_v1($1::bigint[], $2::uuid[], $3::timestamptz[],
    $4::integer[], $5::integer[], $6::text[], $7::text[], $8::text[], $9::float8[])"""


async def emit(conn: asyncpg.Connection, n: int) -> None:
    """n email.sent events for acct_1, in one statement."""
    await conn.execute(
        "SELECT webhooks.emit('acct_1', 'email.sent', jsonb_build_object('n', i))"
        "  FROM generate_series(1, $1) i",
        n,
    )


async def fail(
    conn: asyncpg.Connection, rows: list[asyncpg.Record], status: int = 500
) -> tuple[datetime, list[asyncpg.Record]]:
    """Record a failure for each claimed row in one call; returns that transaction's now() and
    the function's result rows."""
    n = len(rows)
    async with conn.transaction():
        now: datetime = await conn.fetchval("SELECT now()")
        result = await conn.fetch(
            RECORD_SQL,
            [r["delivery_id"] for r in rows],
            [r["lease_token"] for r in rows],
            [datetime.now(UTC)] * n,
            [3] * n,
            [status] * n,
            ["http_status"] * n,
            [f"HTTP {status}"] * n,
            [None] * n,
            [None] * n,
        )
    return now, result


async def make_due(conn: asyncpg.Connection) -> None:
    """Every waiting retry's time has come."""
    await conn.execute("UPDATE webhooks.deliveries SET due_at = now() - interval '1 second'")


# -- retry_schedule and retry_jitter ---------------------------------------------------------------


async def test_retry_schedule_sets_each_delay_and_the_number_of_attempts(
    conn: asyncpg.Connection,
) -> None:
    """With jitter 0, the n-th failure's retry is exactly retry_schedule[n] after the recording
    transaction's now(), and the failure after the last step ends the delivery as failed."""
    await sql_endpoint(conn, ["email.sent"])
    await conn.execute(
        "UPDATE webhooks.settings SET retry_schedule = '{7 seconds, 3 minutes}', retry_jitter = 0"
    )
    await emit(conn, 1)
    seen: list[tuple[str, int, timedelta | None]] = []
    for step in range(3):
        if step:
            await make_due(conn)
        now, [result] = await fail(conn, await conn.fetch(CLAIM_SQL, 1))
        after = result["next_attempt_at"] - now if result["next_attempt_at"] else None
        seen.append((result["outcome"], result["attempt"], after))
    assert seen == [
        ("retry", 1, timedelta(seconds=7)),
        ("retry", 2, timedelta(minutes=3)),
        ("failed", 3, None),
    ]
    assert await conn.fetchval("SELECT count(*) FROM webhooks.deliveries") == 0


JITTER_SAMPLES = 200


async def test_retry_jitter_spreads_retries_on_both_sides_of_the_delay(
    conn: asyncpg.Connection,
) -> None:
    """With retry_jitter 0.5 and a 1000 s step, 200 retries recorded at one now() all fall within
    [500 s, 1500 s], some before 1000 s and some after, and some beyond half the jitter on each
    side (before 750 s, after 1250 s). A correct jitter fails this with probability about
    2 x (3/4)^200 + 2 x 2^-200, under 10^-24; a one-sided jitter (no retry before the delay) or
    one ignoring the setting (the default 0.1 keeps all within [900 s, 1100 s]) always fails."""
    await sql_endpoint(conn, ["email.sent"])
    await conn.execute(
        "UPDATE webhooks.settings SET retry_schedule = '{1000 seconds}', retry_jitter = 0.5,"
        " lease_duration = '1 hour'"
    )
    await conn.execute("UPDATE webhooks.endpoints SET max_in_flight = 256")
    await emit(conn, JITTER_SAMPLES)
    claimed = await conn.fetch(CLAIM_SQL, JITTER_SAMPLES)
    assert len(claimed) == JITTER_SAMPLES
    now, results = await fail(conn, list(claimed))
    delays = [(r["next_attempt_at"] - now).total_seconds() for r in results]
    assert len(delays) == JITTER_SAMPLES
    assert all(500 <= d <= 1500 for d in delays), (min(delays), max(delays))
    assert any(d < 1000 for d in delays), "no retry earlier than the scheduled delay"
    assert any(d > 1000 for d in delays), "no retry later than the scheduled delay"
    assert any(d < 750 for d in delays), f"none earlier than 750 s: min {min(delays)}"
    assert any(d > 1250 for d in delays), f"none later than 1250 s: max {max(delays)}"


# -- disable_after ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failing_for", "last_success_ago", "disabled"),
    [
        pytest.param(61, None, True, id="failing-past-it"),
        pytest.param(59, None, False, id="failing-within-it"),
        pytest.param(120, 61, True, id="last-success-past-it"),
        pytest.param(120, 59, False, id="last-success-within-it"),
    ],
)
async def test_disable_after_is_the_settings_interval(
    conn: asyncpg.Connection, failing_for: int, last_success_ago: int | None, disabled: bool
) -> None:
    """With disable_after = 1 hour, a failure disables the endpoint only when it has been failing
    for longer than an hour and its last success (if any) is older than an hour (ages in
    minutes)."""
    endpoint_id = await sql_endpoint(conn, ["email.sent"])
    await conn.execute("UPDATE webhooks.settings SET disable_after = '1 hour'")
    await conn.execute(
        "UPDATE webhooks.endpoints SET failing_since = now() - make_interval(mins => $1),"
        " last_success_at = now() - make_interval(mins => $2)",
        failing_for,
        last_success_ago,
    )
    await emit(conn, 1)
    await fail(conn, await conn.fetch(CLAIM_SQL, 1))
    endpoint = await conn.fetchrow(
        "SELECT enabled, disabled_reason FROM webhooks.endpoints WHERE id = $1", endpoint_id
    )
    assert endpoint is not None
    expected: dict[str, Any] = {
        "enabled": not disabled,
        "disabled_reason": "no successful delivery for 01:00:00" if disabled else None,
    }
    assert dict(endpoint) == expected


# -- retention -------------------------------------------------------------------------------------


async def test_retention_is_the_cutoff_of_partitions_rows_and_idempotency_keys(
    conn: asyncpg.Connection,
) -> None:
    """With retention = 10 days, maintain_v1 drops the events partition of 11 days ago (it ends
    before now() - 10 days) and keeps that of 10 days ago (it ends after); it deletes the
    default partition's rows and the idempotency keys from an hour before the cutoff and keeps
    those from an hour after it."""
    await conn.execute("UPDATE webhooks.settings SET retention = '10 days'")
    today = await conn.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")
    names = {ago: f"events_p{today - timedelta(days=ago):%Y%m%d}" for ago in (11, 10)}
    for ago, name in names.items():
        day = today - timedelta(days=ago)
        await conn.execute(
            f"CREATE TABLE webhooks.{name} PARTITION OF webhooks.events FOR VALUES"
            f" FROM ('{day} 00:00+00') TO ('{day + timedelta(days=1)} 00:00+00')"
        )
    await conn.execute(
        """
        INSERT INTO webhooks.attempts (delivery_id, endpoint_id, event_id, attempt, started_at,
                                       duration_ms, status_code, outcome)
        VALUES (1, gen_random_uuid(), 1, 1, now() - interval '10 days 1 hour', 5, 200, 'retry'),
               (2, gen_random_uuid(), 2, 1, now() - interval '9 days 23 hours', 5, 200, 'retry');
        INSERT INTO webhooks.idempotency_keys (account_id, key, event_id, created_at)
        VALUES ('acct_1', 'before', 1, now() - interval '10 days 1 hour'),
               ('acct_1', 'after', 2, now() - interval '9 days 23 hours');
        """
    )
    assert await conn.fetchval("SELECT count(*) FROM webhooks.attempts_default") == 2
    result = await conn.fetchval("SELECT webhooks.maintain_v1()")
    assert json.loads(result)["dropped"] == [names[11]]
    assert await conn.fetchval("SELECT to_regclass($1)", f"webhooks.{names[10]}") is not None
    kept = await conn.fetch("SELECT delivery_id FROM webhooks.attempts_default")
    assert [r["delivery_id"] for r in kept] == [2]
    keys = await conn.fetch("SELECT key FROM webhooks.idempotency_keys")
    assert [k["key"] for k in keys] == ["after"]


# -- lease_duration --------------------------------------------------------------------------------


@pytest.mark.parametrize("lease", [timedelta(seconds=7), timedelta(minutes=10)])
async def test_lease_duration_is_how_long_a_claim_holds_its_rows(
    conn: asyncpg.Connection, lease: timedelta
) -> None:
    """A claim moves each leased row's due_at to exactly its transaction's now() plus
    lease_duration, near the shortest the lease check allows (a 1 s timeout plus the 5 s margin)
    and well above the default."""
    await sql_endpoint(conn, ["email.sent"])
    await conn.execute(
        "UPDATE webhooks.settings SET request_timeout_s = 1, lease_duration = $1", lease
    )
    await emit(conn, 2)
    async with conn.transaction():
        assert len(await conn.fetch(CLAIM_SQL, 8)) == 2
        ahead = await conn.fetch("SELECT due_at - now() AS ahead FROM webhooks.deliveries")
    assert [r["ahead"] for r in ahead] == [lease, lease]
