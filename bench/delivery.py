"""W1-W4: how fast and how soon the engine delivers, alone and beside bad endpoints.

All four emit to the 20 endpoints ``acct_0`` .. ``acct_19`` (event i to ``acct_{i % 20}``, path
``/ep_{i % 20}``) through the app's trigger, with a fresh engine that is idle when the workload
begins, so its first commit wakes it by NOTIFY as in production.

- W1 burst: N events in transactions of 500; deliveries/s = N / (first COMMIT sent .. last
  receipt), against the HTTP limit of the same run.
- W2 steady: R events/s for S s, one per transaction, on a fixed schedule (late sends go at once,
  no catch-up burst); latency = the receiver's 2xx answer minus the time the COMMIT was sent.
- W3 slow endpoint: W1 with ``/ep_0`` sleeping 2 s per request. The other 19 endpoints' rate,
  (their events) / (first commit .. their last receipt), against their rate in W1 (the ratio of
  the two times). Once they are done the receiver stops sleeping and the rest drains.
- W4 flaky: W1 with 20 % of answers 500 and a retry schedule of ten 1 s delays (so that the chance
  of an event failing for good, 0.2^11, is nil); everything must arrive, once.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

from bench.cpu import machine_cpu_seconds
from bench.harness import ReceiverStats
from bench.http_baseline import percentile
from bench.report import Row
from bench.suite import (
    ENDPOINTS,
    INSERT_ROW,
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
SLOW_PATH = "/ep_0"
# The SQL functions the engine calls in its cycle, and all those a delivery runs through.
ENGINE_FUNCTIONS = (
    "webhooks.claim_v1",
    "webhooks.record_attempts_v1",
    "webhooks.set_engine_waiting_v1",
    "webhooks.next_due_at_v1",
)
SERVER_FUNCTIONS = ("app.email_event_webhook", "webhooks.emit", *ENGINE_FUNCTIONS)

ACCOUNTS = [f"acct_{i}" for i in range(ENDPOINTS)]


async def w1_burst(suite: Suite, events: int) -> None:
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
    assert result.stats.last is not None
    seconds = result.stats.last - result.first_commit
    suite.w1_seconds = seconds
    rate = events / seconds
    progress(f"W1 delivered {events:,} in {seconds:.2f} s ({rate:,.0f}/s)")
    ratio = rate / suite.http_limit
    suite.add(
        Row("W1 burst", rate, "deliveries/s", ratio, "HTTP limit", "ratio >= 0.70", ratio >= 0.70),
        Row("W1   duplicates", result.stats.duplicates, "", target="= 0",
            ok=result.stats.duplicates == 0, decimals=0),
        Row(f"W1   emitting {events:,} events", result.emit_seconds, "s", decimals=2),
        Row("W1   first commit to last receipt", seconds, "s", decimals=2),
    )  # fmt: skip
    _report_w1_cpu(suite, cpu, events)
    for name in SERVER_FUNCTIONS:
        calls, ms = function_delta(before, after, name)
        suite.add(
            Row(f"W1   server time in {name} ({calls:,} calls)", ms * 1000 / events,
                "us/delivery")
        )  # fmt: skip


async def w2_steady(suite: Suite, rate: float, seconds: float) -> None:
    count = int(rate * seconds)
    progress(f"W2 steady: {rate:g} events/s for {seconds:g} s")
    rows = suite.rows_for(ACCOUNTS, count)
    before = await suite.function_times()
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
    )  # fmt: skip
    # How many round trips an event trickling in costs the engine, and the server's time in each.
    for name in ENGINE_FUNCTIONS:
        calls, ms = function_delta(before, after, name)
        suite.add(
            Row(f"W2   {name} calls per event ({ms * 1000 / max(calls, 1):.0f} us each)",
                calls / count, "", decimals=2)
        )  # fmt: skip


async def w3_slow_endpoint(suite: Suite, events: int, delay_s: float) -> None:
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
    slow_done = result.stats.per_path.get(SLOW_PATH, 0)
    n_others = sum(expected[p] for p in others)
    rate = n_others / seconds / len(others)
    progress(f"W3 the other {len(others)} endpoints took {seconds:.2f} s ({rate:,.0f}/s each)")
    row = Row(
        "W3 slow endpoint: others, per endpoint", rate, "deliveries/s", target="ratio >= 0.95"
    )
    if suite.w1_seconds is not None:
        w1_rate = events / suite.w1_seconds / ENDPOINTS
        ratio = rate / w1_rate
        row = Row(row.measure, rate, row.unit, ratio, "W1, per endpoint", row.target, ratio >= 0.95)
    suite.add(
        row,
        Row(f"W3   slow endpoint, delivered meanwhile (of {expected[SLOW_PATH]})", slow_done,
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


def _report_w1_cpu(suite: Suite, cpu: _W1Cpu, events: int) -> None:
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
    client_us, machine_us_per_request = suite.http_limit_cpu_us
    per = 1e6 / events
    machine_us = cpu.machine * per
    ceiling = cores * 1e6 / machine_us if machine_us else 0.0
    rest = cpu.machine - cpu.engine - cpu.receiver - cpu.bench
    engine_ratio = cpu.engine * per / client_us if client_us else None
    machine_ratio = machine_us / machine_us_per_request if machine_us_per_request else None
    ceiling_ratio = ceiling / suite.http_limit if suite.http_limit else None
    best_us = machine_us - cpu.engine * per + client_us
    best = cores * 1e6 / best_us if best_us > 0 else 0.0
    best_ratio = best / suite.http_limit if suite.http_limit else None
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
