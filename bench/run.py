"""The benchmark suite of issue 6: ``python -m bench [--only W1,W6] [sizes]``; see bench/README.md.

Starts everything it needs, each in its own process: Postgres (a fresh database on the server of
``WEBHOOKS_DATABASE_URL``, or an embedded one), the receiver, the HTTP baselines, an engine per
workload (``misar-webhooks run``) and, for W6, the load generator. Runs the chosen workloads in a
fixed order (W1 first: W3 and W4 are read against it; W5 last: it leaves the most behind) and
prints one table: every figure, its ratio to a baseline measured in the same run, its target and
PASS or MISS. Progress goes to stderr. Exits 1 if the run could not finish (not for a MISS).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import asyncpg
import uvloop

from bench.delivery import w1_burst, w2_steady, w3_slow_endpoint, w4_flaky
from bench.engines import w9_several_engines
from bench.harness import BenchError, ReceiverProcess, database, run_baseline
from bench.memory import w5_backlog, w7_many_endpoints
from bench.producer import w6_producer_cost
from bench.report import Row, render
from bench.sql_costs import sql_costs
from bench.suite import DB_TIMEOUT_S, Suite, progress
from bench.waiting import w8_waiting_endpoints
from engine.db.migrate import migrate

WORKLOADS = ("W1", "W8", "W9", "W2", "W3", "W4", "W6", "S", "W7", "W5")  # the order they run in
BASELINE_CONCURRENCY = (16, 64)
LONE_REQUESTS = 2_000  # the concurrency-1 baseline (latency floor for W2)


def _workloads(
    args: argparse.Namespace, only: Sequence[str]
) -> dict[str, Callable[[Suite], Awaitable[None]]]:
    # W3's bursts run inside W1's rounds, each beside its W1 burst; W3 reports them.
    slow_delay = args.slow_delay if "W3" in only else None
    return {
        "W1": lambda s: w1_burst(s, args.events, slow_delay),
        "W2": lambda s: w2_steady(s, args.steady_rate, args.steady_seconds),
        "W3": w3_slow_endpoint,
        "W4": lambda s: w4_flaky(s, args.events, args.fail_ratio),
        "W5": lambda s: w5_backlog(s, args.backlog, args.backlog_endpoints, args.drain_seconds),
        "W6": lambda s: w6_producer_cost(s, args.producer_seconds, args.producer_connections),
        "S": lambda s: sql_costs(s, args.sql_commits, args.sql_results),
        "W7": lambda s: w7_many_endpoints(s, args.many_endpoints, args.idle_seconds),
        "W8": lambda s: w8_waiting_endpoints(s, args.events, args.waiting),
        "W9": lambda s: w9_several_engines(s, args.events),
    }


async def run(args: argparse.Namespace, only: Sequence[str], workdir: Path) -> str:
    """One run; returns the table. Everything started is stopped before returning."""
    started = time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        server_url = os.environ.get("WEBHOOKS_DATABASE_URL") or None
        progress("starting Postgres" + (" (embedded)" if server_url is None else ""))
        db = await stack.enter_async_context(database(server_url))
        conn = await asyncpg.connect(db.url, timeout=DB_TIMEOUT_S)
        stack.push_async_callback(conn.close)
        await migrate(conn)
        receiver = await stack.enter_async_context(ReceiverProcess.running(workdir))
        suite = Suite(db.url, db.kind, conn, receiver, workdir)
        await suite.prepare()
        await _baselines(suite, args.baseline_requests)
        workloads = _workloads(args, only)
        for name in WORKLOADS:
            if name in only:
                await workloads[name](suite)
    bad_exits = sum(code != 0 for code in suite.engine_exits)
    suite.add(
        Row(f"engines stopped by SIGTERM: exit code not 0 (of {len(suite.engine_exits)})",
            bad_exits, target="= 0", ok=bad_exits == 0, decimals=0),
        Row("total wall time", time.monotonic() - started, "s"),
    )  # fmt: skip
    title = (
        f"misarmail-webhooks benchmarks ({', '.join(w for w in WORKLOADS if w in only)}), "
        f"Postgres {db.kind}, {os.cpu_count()} CPUs"
    )
    return render(title, suite.rows)


async def _baselines(suite: Suite, requests: int) -> None:
    """The HTTP limit (best of concurrency 16 and 64) and a lone request's latency."""
    progress("HTTP baseline at concurrency 1")
    lone = await run_baseline(
        suite.receiver.url("/baseline_c1"), concurrency=1, requests=LONE_REQUESTS
    )
    results = []
    for concurrency in BASELINE_CONCURRENCY:
        progress(f"HTTP limit at concurrency {concurrency}")
        results.append(
            await run_baseline(
                suite.receiver.url(f"/baseline_c{concurrency}"),
                concurrency=concurrency,
                requests=requests,
            )
        )
    best = max(results, key=lambda r: r.requests_per_s)
    suite.http_limit = best.requests_per_s
    suite.http_limit_concurrency = best.concurrency
    suite.baseline_requests = requests
    suite.lone_request_ms = (lone.latency_p50_ms, lone.latency_p99_ms)
    for r in results:
        suite.add(
            Row(f"HTTP limit, concurrency {r.concurrency}", r.requests_per_s, "requests/s",
                r.requests_per_s / suite.http_limit, "HTTP limit")
        )  # fmt: skip
    suite.add(
        Row("HTTP limit: client CPU (one process, one core at most)", best.client_cpu_us,
            "us/request"),
        Row("HTTP limit: machine CPU, all processes", best.machine_cpu_us, "us/request"),
    )  # fmt: skip
    suite.add(
        Row("HTTP lone request p50 (concurrency 1)", lone.latency_p50_ms, "ms", decimals=2),
        Row("HTTP lone request p99 (concurrency 1)", lone.latency_p99_ms, "ms", decimals=2),
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--only", default=",".join(sorted(WORKLOADS)), help="workloads, e.g. W1,W6 (default all)")
    add("--baseline-requests", type=int, default=10_000, help="requests per HTTP limit baseline")
    add("--events", type=int, default=20_000, help="W1, W3, W4, W9: events per burst")
    add("--steady-rate", type=float, default=300.0, help="W2: events per second")
    add("--steady-seconds", type=float, default=20.0, help="W2: duration")
    add("--slow-delay", type=float, default=2.0, help="W3: the slow endpoint's seconds/request")
    add("--fail-ratio", type=float, default=0.2, help="W4: share of attempts answered 500")
    add("--backlog", type=int, default=1_000_000, help="W5: pending deliveries")
    add("--backlog-endpoints", type=int, default=1_000, help="W5: endpoints they are spread over")
    add("--drain-seconds", type=float, default=60.0, help="W5: how long the drain is measured")
    add("--producer-seconds", type=float, default=20.0, help="W6: duration of each variant")
    add("--producer-connections", type=int, default=16, help="W6: app connections")
    add("--sql-commits", type=int, default=20_000, help="S: app commits per trigger variant")
    add("--sql-results", type=int, default=10_000, help="S: deliveries claimed and recorded")
    add("--many-endpoints", type=int, default=10_000, help="W7: endpoints, one event each")
    add("--idle-seconds", type=float, default=35.0, help="W7: idle time after the burst")
    add("--waiting", type=int, default=10_000, help="W8: down endpoints, a retry waiting each")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    only = {w.strip().upper() for w in args.only.split(",") if w.strip()}
    if unknown := only - set(WORKLOADS):
        parser.error(f"unknown workloads {sorted(unknown)}; choose from {', '.join(WORKLOADS)}")
    if only & {"W3", "W4", "W8"}:
        only.add("W1")  # their baseline
    sizes = ("baseline_requests", "events", "backlog", "backlog_endpoints", "many_endpoints",
             "sql_commits", "sql_results", "waiting")  # fmt: skip
    if any(getattr(args, name) < 1 for name in sizes):
        parser.error("sizes must be positive")

    async def go(workdir: Path) -> str:
        # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the children are stopped too.
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await run(args, sorted(only), workdir)

    workdir = Path(tempfile.mkdtemp(prefix="misar-bench-"))
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            table = runner.run(go(workdir))
    except BaseException as exc:
        progress(f"logs kept in {workdir}")
        if isinstance(exc, BenchError):
            print(f"bench: error: {exc}", file=sys.stderr)
            return 1
        if isinstance(exc, KeyboardInterrupt | asyncio.CancelledError):
            print("bench: interrupted; everything it started was stopped", file=sys.stderr)
            return 130
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
