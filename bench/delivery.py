"""W1-W4: how fast and how soon the engine delivers, alone and beside bad endpoints.

All four emit to the 20 endpoints ``acct_0`` .. ``acct_19`` (event i to ``acct_{i % 20}``, path
``/ep_{i % 20}``) through the app's trigger, with a fresh engine that is idle when the workload
begins, so its first commit wakes it by NOTIFY as in production.

- W1 burst: N events in transactions of 500; deliveries/s = N / (first COMMIT sent .. last
  receipt), against the HTTP limit measured just before it; the median of W1_ROUNDS rounds.
- W2 steady: R events/s for S s, one per transaction, on a fixed schedule (late sends go at once,
  no catch-up burst); latency = the receiver's 2xx answer minus the time the COMMIT was sent.
- W3 slow endpoint: W1 with ``/ep_0`` sleeping 2 s per request. The other 19 endpoints' rate,
  (their events) / (first commit .. their last receipt), against their rate in the W1 burst run
  just before (W1's rounds run W3's bursts). Once they are done the receiver stops sleeping and
  the rest drains.
- W4 flaky: W1 with 20 % of answers 500 and a retry schedule of ten 1 s delays (so that the chance
  of an event failing for good, 0.2^11, is nil); everything must arrive, once.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from bench.cpu import machine_cpu_seconds
from bench.harness import BenchError, ReceiverStats, run_baseline
from bench.http_baseline import BaselineResult, percentile
from bench.report import Row
from bench.suite import (
    ENDPOINTS,
    INSERT_ROW,
    Burst,
    Suite,
    burst,
    function_delta,
    progress,
    wait_delivered,
)

RETRY_1S = (
    "UPDATE webhooks.settings SET retry_schedule = array_fill('1 second'::interval, ARRAY[10])"
)
RETRY_DEFAULT = (
    "UPDATE webhooks.settings SET retry_schedule = "
    "'{4 minutes,16 minutes,64 minutes,256 minutes,1024 minutes}'"
)
EVENT_IDS = """
SELECT (e.payload->>'email_event_id')::bigint AS row_id, e.id AS event_id
  FROM webhooks.events e
 WHERE (e.payload->>'email_event_id')::bigint = ANY ($1::bigint[])"""
# W4's last delivery: its attempts and the longest wait between two of them (the retry schedule
# waits 1 s; a longer wait would be the engine stalling, not the receiver failing).
LAST_CHAIN = """
WITH burst AS (SELECT delivery_id, started_at FROM webhooks.attempts WHERE started_at >= $1),
     last AS (SELECT delivery_id FROM burst ORDER BY started_at DESC LIMIT 1),
     chain AS (SELECT started_at - lag(started_at) OVER (ORDER BY started_at) AS gap
                 FROM burst WHERE delivery_id = (SELECT delivery_id FROM last))
SELECT count(*) AS attempts, coalesce(extract(epoch FROM max(gap)), 0)::float8 AS max_gap_s
  FROM chain"""
SLOW_PATH = "/ep_0"
# The SQL functions the engine calls in its cycle, and all those a delivery runs through.
ENGINE_FUNCTIONS = (
    "webhooks.claim_v2",
    "webhooks.record_attempts_v1",
    "webhooks.set_engine_waiting_v1",
    "webhooks.next_due_at_v1",
)
SERVER_FUNCTIONS = ("app.email_event_webhook", "webhooks.emit", *ENGINE_FUNCTIONS)

ACCOUNTS = [f"acct_{i}" for i in range(ENDPOINTS)]
# W1 bursts (each after its own HTTP limit measurement, W3's bursts beside them); the median
# round is reported, with the lowest and highest.
W1_ROUNDS = 3


@dataclass
class W1Round:
    """One W1 burst and the HTTP limit measured just before it; with W3 selected, the W3 burst
    run right after it."""

    limit: BaselineResult
    events: int
    burst: Burst
    cpu: _W1Cpu
    functions: dict[str, tuple[int, float]]  # SQL function -> (calls, ms) during the burst
    w3: _W3Round | None = None

    @property
    def seconds(self) -> float:
        assert self.burst.stats.last is not None
        return self.burst.stats.last - self.burst.first_commit

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def ratio(self) -> float:
        return self.rate / self.limit.requests_per_s


@dataclass
class _W3Round:
    seconds: float  # first commit to the last receipt of the 19 other endpoints
    others: int  # their events
    slow_done: int  # the slow endpoint's deliveries meanwhile
    slow_expected: int


async def w1_burst(suite: Suite, events: int, slow_delay_s: float | None) -> None:
    """W1_ROUNDS rounds of: the HTTP limit (at the baselines' best concurrency), a W1 burst and,
    when ``slow_delay_s`` is given, a W3 burst. The median round by W1/limit is reported, and
    W3 (see :func:`w3_slow_endpoint`) compares each of its bursts with the W1 of its round.

    Measured once at the start, the HTTP limit ran 5,000 to 10,500 requests/s over one day while
    W1 ran 3,200 to 5,000 deliveries/s: the ratio followed the baseline's drift more than the
    engine. A limit measured just before each burst drifts with it.
    """
    for k in range(W1_ROUNDS):
        concurrency = suite.http_limit_concurrency
        progress(f"W1 round {k + 1} of {W1_ROUNDS}: HTTP limit at concurrency {concurrency}")
        limit = await run_baseline(
            suite.receiver.url(f"/baseline_w1_{k}"),
            concurrency=concurrency,
            requests=suite.baseline_requests,
        )
        one = await _w1_round(suite, events, limit)
        if slow_delay_s is not None:
            one.w3 = await _w3_round(suite, events, slow_delay_s)
        suite.w1_rounds.append(one)
    ordered = sorted(suite.w1_rounds, key=lambda r: r.ratio)
    median = ordered[len(ordered) // 2]
    suite.w1_seconds = median.seconds
    duplicates = sum(r.burst.stats.duplicates for r in ordered)
    ok = median.ratio >= 0.70
    suite.add(
        Row("W1 burst", median.rate, "deliveries/s", median.ratio, "HTTP limit, its round",
            "ratio >= 0.70", ok),
        Row(f"W1   its round's HTTP limit (concurrency {median.limit.concurrency})",
            median.limit.requests_per_s, "requests/s"),
        Row(f"W1   burst / HTTP limit in each of the {W1_ROUNDS} rounds: lowest",
            ordered[0].ratio, f"highest {ordered[-1].ratio:.2f}", decimals=2),
        Row(f"W1   duplicates ({W1_ROUNDS} rounds)", duplicates, "", target="= 0",
            ok=duplicates == 0, decimals=0),
        Row(f"W1   emitting {events:,} events", median.burst.emit_seconds, "s", decimals=2),
        Row("W1   first commit to last receipt", median.seconds, "s", decimals=2),
    )  # fmt: skip
    _report_w1_cpu(suite, median)
    for name, (calls, ms) in median.functions.items():
        suite.add(
            Row(f"W1   server time in {name} ({calls:,} calls)", ms * 1000 / events,
                "us/delivery")
        )  # fmt: skip


async def _w1_round(suite: Suite, events: int, limit: BaselineResult) -> W1Round:
    progress(f"W1 burst of {events:,} events")
    before = await suite.function_times()
    async with suite.engine() as engine:
        cpu0 = _W1Cpu.now(engine.cpu_seconds(), suite.receiver.cpu_seconds())
        result = await burst(
            suite, engine, suite.rows_for(ACCOUNTS, events), lambda s: s.unique >= events
        )
        await suite.wait_idle(engine)
        cpu = _W1Cpu.now(engine.cpu_seconds(), suite.receiver.cpu_seconds()).minus(cpu0)
    await asyncio.sleep(0.5)  # the engine's backends report their statistics as they exit
    after = await suite.function_times()
    functions = {name: function_delta(before, after, name) for name in SERVER_FUNCTIONS}
    one = W1Round(limit, events, result, cpu, functions)
    progress(
        f"W1 delivered {events:,} in {one.seconds:.2f} s ({one.rate:,.0f}/s, "
        f"{one.ratio:.2f} of {limit.requests_per_s:,.0f} requests/s)"
    )
    return one


HOT_TABLE_VACUUMS = """
SELECT n_dead_tup, vacuum_count, autovacuum_count
  FROM pg_stat_user_tables WHERE relid = 'webhooks.deliveries'::regclass
"""


async def _hot_table_vacuums(suite: Suite) -> dict[str, int]:
    row = await suite.conn.fetchrow(HOT_TABLE_VACUUMS)
    if row is None:
        raise BenchError("pg_stat_user_tables has no row for webhooks.deliveries")
    return dict(row)


async def w2_steady(suite: Suite, rate: float, seconds: float) -> None:
    count = int(rate * seconds)
    progress(f"W2 steady: {rate:g} events/s for {seconds:g} s")
    rows = suite.rows_for(ACCOUNTS, count)
    before = await suite.function_times()
    hot_before = await _hot_table_vacuums(suite)
    async with suite.engine() as engine:
        engine_cpu0 = engine.cpu_seconds()
        conn = suite.conn
        commits: dict[int, float] = {}  # app row id -> COMMIT sent
        path_of: dict[int, str] = {}
        started = time.perf_counter()
        for k, row in enumerate(rows):
            delay = started + k / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tx = conn.transaction()
            await tx.start()
            row_id = await conn.fetchval(INSERT_ROW + " RETURNING id", *row)
            commits[row_id] = time.time()
            await tx.commit()
            path_of[row_id] = f"/ep_{k % ENDPOINTS}"
        sent_s = time.perf_counter() - started
        await wait_delivered(suite.receiver, engine, lambda s: s.unique >= count)
        await suite.wait_idle(engine)
        engine_cpu = engine.cpu_seconds() - engine_cpu0
    await asyncio.sleep(0.5)  # the engine's backends report their statistics as they exit
    after = await suite.function_times()
    hot_after = await _hot_table_vacuums(suite)
    arrivals = await suite.receiver.arrivals()
    latencies = []
    for record in await conn.fetch(EVENT_IDS, list(commits)):
        row_id, event_id = record["row_id"], record["event_id"]
        arrival = arrivals[f"evt_{event_id} {path_of[row_id]}"]
        latencies.append((arrival - commits[row_id]) * 1000)
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    lone50, lone99 = suite.lone_request_ms
    progress(f"W2 latency p50 {p50:.2f} ms, p99 {p99:.2f} ms over {len(latencies):,} events")
    suite.add(
        Row("W2 steady, events sent", count / sent_s, "events/s", target=f"= {rate:g}",
            ok=count / sent_s >= 0.98 * rate),
        Row("W2   commit-to-receipt p50", p50, "ms", p50 / lone50, "lone request p50",
            "<= 5 ms", p50 <= 5.0, decimals=2),
        Row("W2   commit-to-receipt p99", p99, "ms", p99 / lone99, "lone request p99",
            "<= 20 ms", p99 <= 20.0, decimals=2),
        Row("W2   commit-to-receipt max", max(latencies), "ms", decimals=2),
        Row("W2   engine CPU", engine_cpu * 1e6 / count, "us/event"),
        # The bursts before W2 leave the hot table's index full of dead entries that every claim
        # walks until a vacuum: the engine's own (engine.delivery.idle_vacuum), or autovacuum's.
        Row("W2   hot table's dead rows when W2 began", hot_before["n_dead_tup"], "rows",
            decimals=0),
        Row("W2   vacuums of the hot table during W2: by the engine",
            hot_after["vacuum_count"] - hot_before["vacuum_count"],
            f"autovacuum {hot_after['autovacuum_count'] - hot_before['autovacuum_count']}",
            decimals=0),
    )  # fmt: skip
    # How many round trips an event trickling in costs the engine, and the server's time in each.
    for name in ENGINE_FUNCTIONS:
        calls, ms = function_delta(before, after, name)
        suite.add(
            Row(f"W2   {name} calls per event ({ms * 1000 / max(calls, 1):.0f} us each)",
                calls / count, "", decimals=2)
        )  # fmt: skip


async def _w3_round(suite: Suite, events: int, delay_s: float) -> _W3Round:
    progress(f"W3 burst of {events:,} events, {SLOW_PATH} sleeping {delay_s:g} s per request")
    others = [f"/ep_{i}" for i in range(ENDPOINTS) if f"/ep_{i}" != SLOW_PATH]
    expected = {path: len(range(i, events, ENDPOINTS)) for i, path in enumerate(_paths())}

    def others_done(stats: ReceiverStats) -> bool:
        return all(stats.per_path.get(p, 0) >= expected[p] for p in others)

    await suite.receiver.configure(delay_s={SLOW_PATH: delay_s})
    try:
        async with suite.engine() as engine:
            result = await burst(suite, engine, suite.rows_for(ACCOUNTS, events), others_done)
            await suite.receiver.configure()
            await wait_delivered(suite.receiver, engine, lambda s: s.unique >= events)
            await suite.wait_idle(engine)
    finally:
        await suite.receiver.configure()
    seconds = max(result.stats.last_per_path[p] for p in others) - result.first_commit
    one = _W3Round(
        seconds=seconds,
        others=sum(expected[p] for p in others),
        slow_done=result.stats.per_path.get(SLOW_PATH, 0),
        slow_expected=expected[SLOW_PATH],
    )
    progress(f"W3 the other {len(others)} endpoints took {seconds:.2f} s")
    return one


async def w3_slow_endpoint(suite: Suite) -> None:
    """Reports the W3 bursts that W1's rounds ran: each against the W1 burst just before it (the
    per-endpoint rate of the 19 others against W1's per endpoint), median round."""
    paired = [(r, r.w3) for r in suite.w1_rounds if r.w3 is not None]
    if not paired:
        raise BenchError("W3 runs inside W1's rounds, and none ran")
    n_others = ENDPOINTS - 1

    def ratio(pair: tuple[W1Round, _W3Round]) -> float:
        w1, w3 = pair
        return (w3.others / w3.seconds / n_others) / (w1.rate / ENDPOINTS)

    ordered = sorted(paired, key=ratio)
    w1, w3 = ordered[len(ordered) // 2]
    lowest, highest = ratio(ordered[0]), ratio(ordered[-1])
    suite.add(
        Row("W3 slow endpoint: others, per endpoint", w3.others / w3.seconds / n_others,
            "deliveries/s", ratio((w1, w3)), "W1 of its round, per endpoint", "ratio >= 0.95",
            ratio((w1, w3)) >= 0.95),
        Row(f"W3   others / W1 in each of the {len(ordered)} rounds: lowest", lowest,
            f"highest {highest:.2f}", decimals=2),
        Row(f"W3   slow endpoint, delivered meanwhile (of {w3.slow_expected})", w3.slow_done,
            decimals=0),
    )  # fmt: skip


async def w4_flaky(suite: Suite, events: int, fail_ratio: float) -> None:
    progress(f"W4 burst of {events:,} events, {fail_ratio:.0%} answered 500, retries after 1 s")
    await suite.conn.execute(RETRY_1S)
    await suite.receiver.configure(fail_ratio=fail_ratio)
    try:
        async with suite.engine() as engine:
            result = await burst(
                suite, engine, suite.rows_for(ACCOUNTS, events), lambda s: s.unique >= events
            )
            await suite.wait_idle(engine)
            stats = await suite.receiver.stats()
    finally:
        await suite.receiver.configure()
        await suite.conn.execute(RETRY_DEFAULT)
    assert result.stats.last is not None
    seconds = result.stats.last - result.first_commit
    chain = await suite.conn.fetchrow(LAST_CHAIN, datetime.fromtimestamp(result.first_commit, UTC))
    assert chain is not None  # aggregates: always one row
    failed_for_good = await suite.conn.fetchval(
        "SELECT count(*) FROM webhooks.delivery_outcomes WHERE status <> 'delivered'"
    )
    progress(f"W4 delivered {stats.unique:,} in {seconds:.2f} s, {stats.failed:,} answered 500")
    ratio = seconds / suite.w1_seconds if suite.w1_seconds else None
    suite.add(
        Row("W4 flaky: delivered", stats.unique, "events", target=f"= {events:,}",
            ok=stats.unique == events and failed_for_good == 0, decimals=0),
        Row("W4   duplicates", stats.duplicates, "", target="= 0", ok=stats.duplicates == 0,
            decimals=0),
        Row("W4   answered 500 (retried)", stats.failed, "attempts", decimals=0),
        Row("W4   time to completion", seconds, "s", ratio, "W1 time" if ratio else "",
            decimals=2),
        Row("W4   the last delivery's attempts", chain["attempts"], "", decimals=0),
        Row("W4   its longest wait between attempts (schedule: 1 s)", chain["max_gap_s"], "s",
            decimals=2),
    )  # fmt: skip


def _paths() -> list[str]:
    return [f"/ep_{i}" for i in range(ENDPOINTS)]


@dataclass(frozen=True)
class _W1Cpu:
    """CPU seconds so far: the engine, the receiver, this process (which emits the events) and
    every process on the machine; and the wall clock."""

    engine: float
    receiver: float
    bench: float
    machine: float
    wall: float

    @classmethod
    def now(cls, engine: float, receiver: float) -> _W1Cpu:
        return cls(engine, receiver, time.process_time(), machine_cpu_seconds(), time.monotonic())

    def minus(self, earlier: _W1Cpu) -> _W1Cpu:
        return _W1Cpu(
            self.engine - earlier.engine,
            self.receiver - earlier.receiver,
            self.bench - earlier.bench,
            self.machine - earlier.machine,
            self.wall - earlier.wall,
        )


def _report_w1_cpu(suite: Suite, median: W1Round) -> None:
    """Where W1's CPU goes, per delivery, and the rate the machine's cores allow at that cost.

    The rest (machine less engine, receiver and bench) is Postgres in the main, plus the kernel's
    share and any other process. The ceiling is the cores divided by the machine's CPU per
    delivery: no scheduling can beat it, so when it is under 70 % of the HTTP limit the target
    cannot be met without making a delivery cheaper. The best case puts the baseline client's
    CPU per request in place of the engine's and keeps the rest as measured: what an engine
    that did nothing but the bare aiohttp POSTs could reach beside this Postgres, receiver and
    producer.
    """
    cores = os.cpu_count() or 1
    cpu, limit = median.cpu, median.limit
    client_us, machine_us_per_request = limit.client_cpu_us, limit.machine_cpu_us
    per = 1e6 / median.events
    machine_us = cpu.machine * per
    ceiling = cores * 1e6 / machine_us if machine_us else 0.0
    rest = cpu.machine - cpu.engine - cpu.receiver - cpu.bench
    engine_ratio = cpu.engine * per / client_us if client_us else None
    machine_ratio = machine_us / machine_us_per_request if machine_us_per_request else None
    ceiling_ratio = ceiling / limit.requests_per_s
    best_us = machine_us - cpu.engine * per + client_us
    best = cores * 1e6 / best_us if best_us > 0 else 0.0
    best_ratio = best / limit.requests_per_s
    suite.add(
        Row("W1   engine CPU", cpu.engine * per, "us/delivery", engine_ratio,
            "HTTP limit client"),
        Row("W1   receiver CPU", cpu.receiver * per, "us/delivery"),
        Row("W1   bench process CPU (emits the events)", cpu.bench * per, "us/delivery"),
        Row("W1   rest: Postgres, kernel, other processes", rest * per, "us/delivery"),
        Row("W1   machine CPU, all processes", machine_us, "us/delivery", machine_ratio,
            "HTTP limit machine"),
        Row(f"W1   machine busy (of {cores} cores)", 100 * cpu.machine / (cores * cpu.wall), "%",
            decimals=0),
        Row(f"W1   ceiling: {cores} cores / machine CPU per delivery", ceiling, "deliveries/s",
            ceiling_ratio, "HTTP limit"),
        Row("W1   best case: the same with the engine's CPU as the client's", best,
            "deliveries/s", best_ratio, "HTTP limit"),
    )  # fmt: skip
