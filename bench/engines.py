"""W9 several engines: W1's burst delivered by two engines against the same burst by one.

Issue 14: replicas must lose no efficiency to coordination (the claim keeps every endpoint's
limits across engines, sql/functions/40_claim.sql). On a saturated 2-core machine a second engine
cannot add cores, so the target is that two engines together deliver at least 0.9 of one engine's
rate, and the CPU per delivery shows what the coordination costs.

Rounds alternate which runs first (one engine, two engines; then two, one), so the machine's
drift over the run weighs on both alike; each round's ratio is two engines' rate over one's, and
the median round is reported. Per delivery: the engines' CPU (all of them together), and the
server's time in ``claim_v2``, whose per-endpoint lock, count and pacing are the coordination.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
from dataclasses import dataclass

from bench.delivery import ACCOUNTS
from bench.report import Row
from bench.suite import Suite, burst, function_delta, progress

ROUNDS = 3
CLAIM = "webhooks.claim_v2"


@dataclass(frozen=True)
class _Run:
    engines: int
    rate: float  # deliveries/s, first COMMIT sent to last receipt
    engine_cpu_us: float  # CPU of every engine together, per delivery
    claim_us: float  # the server's time in claim_v2, per delivery
    claims: int


async def w9_several_engines(suite: Suite, events: int) -> None:
    """ROUNDS rounds of W1's burst by one engine and by two, alternating which goes first."""
    pairs: list[tuple[_Run, _Run]] = []
    for k in range(ROUNDS):
        order = (1, 2) if k % 2 == 0 else (2, 1)
        runs = {n: await _run(suite, events, n, k) for n in order}
        pairs.append((runs[1], runs[2]))
    ratios = [two.rate / one.rate for one, two in pairs]
    median_ratio = statistics.median(ratios)
    one = _median_run([p[0] for p in pairs])
    two = _median_run([p[1] for p in pairs])
    ok = median_ratio >= 0.9
    suite.add(
        Row("W9 two engines / one, W1 burst", two.rate, "deliveries/s", median_ratio,
            "one engine, its round", "ratio >= 0.90", ok),
        Row("W9   one engine", one.rate, "deliveries/s"),
        Row(f"W9   two / one in each of the {ROUNDS} rounds: lowest", min(ratios),
            f"highest {max(ratios):.2f}", decimals=2),
        Row("W9   engine CPU, one engine", one.engine_cpu_us, "us/delivery"),
        Row("W9   engine CPU, two engines together", two.engine_cpu_us, "us/delivery",
            two.engine_cpu_us / one.engine_cpu_us, "one engine"),
        Row(f"W9   server time in claim_v2, one engine ({one.claims:,} calls)", one.claim_us,
            "us/delivery"),
        Row(f"W9   server time in claim_v2, two engines ({two.claims:,} calls)", two.claim_us,
            "us/delivery", two.claim_us / one.claim_us if one.claim_us else None, "one engine"),
    )  # fmt: skip


def _median_run(runs: list[_Run]) -> _Run:
    return sorted(runs, key=lambda r: r.rate)[len(runs) // 2]


async def _run(suite: Suite, events: int, engines: int, k: int) -> _Run:
    progress(f"W9 round {k + 1} of {ROUNDS}: W1 burst of {events:,} events, {engines} engine(s)")
    before = await suite.function_times()
    async with contextlib.AsyncExitStack() as stack:
        procs = [await stack.enter_async_context(suite.engine()) for _ in range(engines)]
        cpu0 = sum(p.cpu_seconds() for p in procs)
        result = await burst(
            suite, procs[0], suite.rows_for(ACCOUNTS, events), lambda s: s.unique >= events
        )
        await suite.wait_idle(procs[0])
        cpu = sum(p.cpu_seconds() for p in procs) - cpu0
    await asyncio.sleep(0.5)  # the engines' backends report their statistics as they exit
    calls, ms = function_delta(before, await suite.function_times(), CLAIM)
    assert result.stats.last is not None
    run = _Run(
        engines,
        events / (result.stats.last - result.first_commit),
        cpu * 1e6 / events,
        ms * 1000 / events,
        calls,
    )
    progress(f"W9 {engines} engine(s): {run.rate:,.0f} deliveries/s")
    return run
