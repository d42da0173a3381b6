"""W8: a burst to healthy endpoints while thousands of others are down, each with a retry waiting.

On a normal day some of MisarMail's thousands of endpoints are down: each holds a delivery waiting
for its retry. W8 writes N such endpoints (default 10,000; ``--waiting``), each with one delivery
that failed once and is due again in an hour, then runs W1's burst (the same events to the same 20
healthy endpoints, through the app's trigger) with them in the hot table. Its rate is reported
against the median of W1's rounds in the same run: a claim whose cost grew with the waiting
deliveries would show here, since every claim of the burst pays it.

The waiting set is written with set-based SQL, not by failing real attempts (an hour's retry
cannot be waited for): the endpoints through ``webhooks.create_endpoint`` (their URLs are on a
port that refuses connections), one event each, and one delivery each in the state
``record_attempts_v1`` leaves after a refused connection: one attempt, the error, due in an hour,
and, where the schema has the ready set (migration 0004), not ready.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from bench.delivery import ACCOUNTS, W1_ROUNDS
from bench.harness import BenchError, run_baseline, wait_until
from bench.report import Row
from bench.suite import ENGINE_WAITING, STALL_S, Suite, burst, function_delta, progress

W8_PREFIX = "w8_"
# Port 1 (tcpmux) is closed on any machine that runs this: a connection is refused at once.
REFUSING_URL = "http://127.0.0.1:1/"
TARGET = 0.90
CLAIM = "webhooks.claim_v2"

ENDPOINTS_SQL = """
SELECT count(*) FROM generate_series(0, $1::integer - 1) AS g,
       LATERAL webhooks.create_endpoint($2::text || g, $3::text || g, '{*}') AS e"""
HAS_READY_SET = """
SELECT EXISTS (SELECT FROM information_schema.columns
                WHERE table_schema = 'webhooks' AND table_name = 'deliveries'
                  AND column_name = 'ready')"""
WAITING_SQL = """
WITH ev AS (
    INSERT INTO webhooks.events (account_id, type, payload)
    SELECT $1::text || g, 'email.bounced', jsonb_build_object('n', g, 'bounce_type', 'soft')
      FROM generate_series(0, $2::integer - 1) AS g
    RETURNING id, created_at, type, account_id
)
INSERT INTO webhooks.deliveries
    (event_id, event_created_at, event_type, endpoint_id, attempts, due_at, last_status,
     last_error, last_attempt_at{ready_column})
SELECT ev.id, ev.created_at, ev.type, e.id, 1, now() + interval '1 hour', 0,
       'connect: connection refused', now(){ready_value}
  FROM ev JOIN webhooks.endpoints e ON e.account_id = ev.account_id"""
# Live deliveries, and accepted events not fanned out yet (each becomes one or more of them).
LIVE_DELIVERIES = (
    "SELECT (SELECT count(*) FROM webhooks.deliveries) + (SELECT count(*) FROM webhooks.intake)"
)


async def w8_waiting_endpoints(suite: Suite, events: int, waiting: int) -> None:
    """W1_ROUNDS W1 bursts with ``waiting`` down endpoints in the hot table; the median round's
    rate against W1's median (W1 must have run first in the same run)."""
    if not suite.w1_rounds:
        raise BenchError("W8 is read against W1, which did not run")
    conn = suite.conn
    progress(f"W8 writing {waiting:,} down endpoints, each with a retry due in an hour")
    started = time.monotonic()
    await suite.clear()
    await conn.fetchval(ENDPOINTS_SQL, waiting, W8_PREFIX, REFUSING_URL, timeout=3600)
    ready_set = bool(await conn.fetchval(HAS_READY_SET))
    sql = WAITING_SQL.format(
        ready_column=", ready" if ready_set else "", ready_value=", false" if ready_set else ""
    )
    await conn.execute(sql, W8_PREFIX, waiting, timeout=3600)
    await conn.execute("VACUUM ANALYZE webhooks.deliveries, webhooks.endpoints", timeout=3600)
    written_s = time.monotonic() - started
    progress(f"W8 waiting set written in {written_s:.1f} s")
    rounds = []
    for k in range(W1_ROUNDS):
        concurrency = suite.http_limit_concurrency
        progress(f"W8 round {k + 1} of {W1_ROUNDS}: HTTP limit at concurrency {concurrency}")
        limit = await run_baseline(
            suite.receiver.url(f"/baseline_w8_{k}"),
            concurrency=concurrency,
            requests=suite.baseline_requests,
        )
        rate, claim_us = await _round(suite, events, waiting)
        rounds.append((rate, limit.requests_per_s, claim_us))
    await suite.clear()
    w1_rate = statistics.median(r.rate for r in suite.w1_rounds)
    rates = sorted(rate for rate, _, _ in rounds)
    median = rates[len(rates) // 2]
    normalised = statistics.median(r / limit for r, limit, _ in rounds) / statistics.median(
        r.ratio for r in suite.w1_rounds
    )
    ratio = median / w1_rate
    w1_claim = statistics.median(
        function_delta({}, r.functions, CLAIM)[1] * 1000 / r.events for r in suite.w1_rounds
    )
    w8_claim = statistics.median(us for _, _, us in rounds)
    progress(f"W8 median {median:,.0f} deliveries/s, {ratio:.2f} of W1's {w1_rate:,.0f}")
    suite.add(
        Row(f"W8 burst beside {waiting:,} waiting endpoints", median, "deliveries/s", ratio,
            "W1, median of rounds", f"ratio >= {TARGET:.2f}", ratio >= TARGET),
        Row(f"W8   rate / its round's HTTP limit, against W1's ({W1_ROUNDS} rounds each)",
            normalised, "", decimals=2),
        Row(f"W8   rate in each of the {W1_ROUNDS} rounds: lowest", rates[0],
            f"highest {rates[-1]:,.0f}", decimals=0),
        Row(f"W8   server time in {CLAIM} (median round)",
            w8_claim, "us/delivery", w8_claim / w1_claim
            if w1_claim else None, "W1, median of rounds"),
        Row("W8   ready set (migration 0004) in the schema", float(ready_set), "1 = yes",
            decimals=0),
        Row(f"W8   writing {waiting:,} endpoints and their waiting deliveries", written_s, "s"),
    )  # fmt: skip


async def _round(suite: Suite, events: int, waiting: int) -> tuple[float, float]:
    """One W1 burst with the waiting set in place: deliveries/s (first commit to last receipt)
    and the server's time in claim_v2 per delivery (us)."""
    progress(f"W8 burst of {events:,} events beside {waiting:,} waiting deliveries")
    before = await suite.function_times()
    async with suite.engine() as engine:
        result = await burst(
            suite, engine, suite.rows_for(ACCOUNTS, events), lambda s: s.unique >= events
        )

        async def settled() -> bool:
            # Every burst delivery recorded (only the waiting set left) and the engine asleep.
            return await suite.conn.fetchval(LIVE_DELIVERIES) == waiting and bool(
                await suite.conn.fetchval(ENGINE_WAITING)
            )

        await wait_until(settled, timeout_s=STALL_S, what="the engine to go idle", alive=engine)
    await asyncio.sleep(0.5)  # the engine's backends report their statistics as they exit
    _, claim_ms = function_delta(before, await suite.function_times(), CLAIM)
    assert result.stats.last is not None
    seconds = result.stats.last - result.first_commit
    progress(f"W8 delivered {events:,} in {seconds:.2f} s ({events / seconds:,.0f}/s)")
    return events / seconds, claim_ms * 1000 / events
