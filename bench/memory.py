"""W5 and W7: what a backlog and many endpoints cost the engine in memory and tasks.

- W5 backlog: D pending deliveries over E endpoints (default 1,000,000 over 1,000), written
  before the engine starts, then the engine's peak RSS (VmHWM) and how many deliveries reached
  the receiver in the first M seconds after its start (the drain rate; startup included).
  The backlog is written with two set-based statements, not through ``emit`` (a million trigger
  calls would take minutes): ``INSERT ... SELECT generate_series`` into ``webhooks.events`` (1 KiB
  payloads of the same size as the emitted ones, event i for account ``w5_{i % E}``), then one
  delivery per event for that account's endpoint, as ``emit`` would have written them.
- W7 many endpoints: E endpoints (default 10,000), one event each, emitted through the trigger;
  its actors and asyncio tasks are read from /metrics once all are delivered, and again, with its
  RSS and peak RSS from /proc, after the engine was left idle for a while (``--idle-seconds``),
  against the same engine at rest before the burst. An actor ends with its work, so the counts
  when delivered should already be the resting ones; the idle period shows that nothing is
  reaped late, and that the memory a burst took is not held on to.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from bench.cpu import machine_cpu_seconds
from bench.harness import EngineProcess
from bench.payloads import EVENT_TYPE, PAYLOAD_BYTES, payload
from bench.report import Row
from bench.suite import DB_TIMEOUT_S, Suite, burst, function_delta, progress

W5_PREFIX = "w5_"
W7_PREFIX = "w7_"
RSS_TARGET_MB = 150.0
SAMPLE_S = 1.0
BURST_SAMPLE_S = 0.25  # W7: how often /metrics is read during the burst

# The same keys and value lengths as bench.payloads.payload(i), so the same 1 KiB.
BACKLOG = """
WITH ev AS (
    INSERT INTO webhooks.events (account_id, type, payload)
    SELECT $1::text || (g % $2::integer), $3::text,
           jsonb_build_object(
               'email_id', 'em_' || lpad(g::text, 12, '0'),
               'message_id', '<' || lpad(g::text, 12, '0') || '@mail.misarmail.test>',
               'to', 'user' || lpad((g % 100000)::text, 6, '0') || '@example.test',
               'subject', 'Your weekly digest',
               'padding', repeat('x', $4::integer))
      FROM generate_series(0, $5::integer - 1) AS g
    RETURNING id, created_at, type, account_id
)
INSERT INTO webhooks.deliveries (event_id, event_created_at, event_type, endpoint_id)
SELECT ev.id, ev.created_at, ev.type, e.id
  FROM ev JOIN webhooks.endpoints e ON e.account_id = ev.account_id"""


async def w5_backlog(suite: Suite, deliveries: int, endpoints: int, seconds: float) -> None:
    conn = suite.conn
    progress(f"W5 writing {deliveries:,} pending deliveries over {endpoints:,} endpoints")
    await suite.clear()
    await suite.create_endpoints([f"{W5_PREFIX}{i}" for i in range(endpoints)], f"/{W5_PREFIX}")
    started = time.monotonic()
    padding = len(payload(0)["padding"])
    await conn.execute(BACKLOG, W5_PREFIX, endpoints, EVENT_TYPE, padding, deliveries, timeout=3600)
    await conn.execute("VACUUM ANALYZE webhooks.deliveries", timeout=DB_TIMEOUT_S)
    written_s = time.monotonic() - started
    progress(f"W5 backlog written in {written_s:.1f} s; starting the engine")
    await suite.receiver.reset()
    peak = 0.0
    functions0 = await suite.function_times()
    async with suite.engine(ready=False) as engine:
        start = time.monotonic()
        cpu0 = (engine.cpu_seconds(), suite.receiver.cpu_seconds(), machine_cpu_seconds())
        while time.monotonic() - start < seconds:
            engine.check_alive()
            peak = max(peak, engine.memory_mb()[1])
            await asyncio.sleep(SAMPLE_S)
        drained = (await suite.receiver.stats()).unique
        elapsed = time.monotonic() - start
        cpu1 = (engine.cpu_seconds(), suite.receiver.cpu_seconds(), machine_cpu_seconds())
        peak = max(peak, engine.memory_mb()[1])
        metrics = await engine.metrics()
    await asyncio.sleep(0.5)  # the engine's backends report their statistics as they exit
    functions1 = await suite.function_times()
    await suite.clear()
    rate = drained / elapsed
    # Where the time went, per delivery: the engine, the receiver and the whole machine (CPU), and
    # the server's own time in the engine's SQL functions.
    per_us = 1e6 / max(drained, 1)
    engine_us, receiver_us, machine_us = ((b - a) * per_us for a, b in zip(cpu0, cpu1, strict=True))
    server = {
        name: function_delta(functions0, functions1, name)
        for name in ("webhooks.claim_v2", "webhooks.record_attempts_v1")
    }
    progress(f"W5 peak RSS {peak:.1f} MB, {drained:,} delivered in {elapsed:.0f} s")
    rest = suite.rest_rss_mb
    suite.add(
        Row(f"W5 backlog of {deliveries:,}: engine peak RSS", peak, "MB",
            peak / rest if rest else None, "engine at rest" if rest else "",
            f"<= {RSS_TARGET_MB:g} MB", peak <= RSS_TARGET_MB),
        Row(f"W5   drain rate, first {seconds:g} s", rate, "deliveries/s",
            rate / suite.http_limit, "HTTP limit"),
        Row("W5   engine CPU", engine_us, "us/delivery"),
        Row("W5   receiver CPU", receiver_us, "us/delivery"),
        Row("W5   machine CPU, all processes", machine_us, "us/delivery"),
        *(
            Row(f"W5   server time in {name} ({calls:,} calls)", ms * 1000 / max(drained, 1),
                "us/delivery")
            for name, (calls, ms) in server.items()
        ),
        Row(f"W5   actors at {seconds:g} s", metrics["misar_webhooks_actors"], decimals=0),
        Row(f"W5   asyncio tasks at {seconds:g} s", metrics["misar_webhooks_tasks"], "",
            metrics["misar_webhooks_tasks"] / suite.rest_tasks if suite.rest_tasks else None,
            "engine at rest" if suite.rest_tasks else "", decimals=0),
        Row(f"W5   writing the backlog ({PAYLOAD_BYTES} B payloads)", written_s, "s"),
    )  # fmt: skip


async def w7_many_endpoints(suite: Suite, endpoints: int, idle_s: float) -> None:
    progress(f"W7 {endpoints:,} endpoints, one event each, then {idle_s:g} s idle")
    accounts = [f"{W7_PREFIX}{i}" for i in range(endpoints)]
    await suite.create_endpoints(accounts, f"/{W7_PREFIX}")
    async with suite.engine() as engine:
        rest_rss = engine.memory_mb()[0]
        rest = await engine.metrics()
        most: dict[str, float] = {}
        sampling = asyncio.get_running_loop().create_task(_sample_most(engine, most))
        try:
            await burst(
                suite, engine, suite.rows_for(accounts, endpoints), lambda s: s.unique >= endpoints
            )
            await suite.wait_idle(engine)
        finally:
            sampling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampling
        busy = await engine.metrics()
        await asyncio.sleep(idle_s)
        rss, peak = engine.memory_mb()
        after = await engine.metrics()
    actors, tasks = after["misar_webhooks_actors"], after["misar_webhooks_tasks"]
    rest_tasks = rest["misar_webhooks_tasks"]
    progress(
        f"W7 after idle: {actors:.0f} actors, {tasks:.0f} tasks (at rest {rest_tasks:.0f}, "
        f"when delivered {busy['misar_webhooks_tasks']:.0f}), RSS {rss:.1f} MB, peak {peak:.1f} MB"
    )
    suite.add(
        Row(f"W7 {endpoints:,} endpoints: actors after idle", actors, "", target="= 0",
            ok=actors == 0, decimals=0),
        Row("W7   asyncio tasks after idle", tasks, "", tasks / rest_tasks, "engine at rest",
            "ratio <= 1", tasks <= rest_tasks, decimals=0),
        Row("W7   asyncio tasks when all delivered", busy["misar_webhooks_tasks"], "",
            busy["misar_webhooks_tasks"] / rest_tasks, "engine at rest", decimals=0),
        Row("W7   most actors seen during the burst", most.get("misar_webhooks_actors", 0),
            decimals=0),
        Row("W7   most asyncio tasks seen during the burst", most.get("misar_webhooks_tasks", 0),
            decimals=0),
        Row("W7   engine RSS after idle", rss, "MB", rss / rest_rss, "engine at rest"),
        Row("W7   engine peak RSS", peak, "MB", peak / rest_rss, "engine at rest",
            f"<= {RSS_TARGET_MB:g} MB", peak <= RSS_TARGET_MB),
    )  # fmt: skip


async def _sample_most(engine: EngineProcess, most: dict[str, float]) -> None:
    """Keep the highest actor and task counts the engine's /metrics shows, until cancelled."""
    while True:
        metrics = await engine.metrics()
        for name in ("misar_webhooks_actors", "misar_webhooks_tasks"):
            most[name] = max(most.get(name, 0.0), metrics[name])
        await asyncio.sleep(BURST_SAMPLE_S)
