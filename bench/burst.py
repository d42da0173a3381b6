"""W1 burst: how fast the engine delivers a burst, as a fraction of this machine's HTTP limit.

``python -m bench.burst [--events N] [--max-in-flight 8 16] [--json]``

Starts everything it needs, each in its own process: Postgres (a fresh database on the server of
``WEBHOOKS_DATABASE_URL``, or an embedded one), the receiver, the HTTP baseline at concurrency 16
and 64, and the engine as ``misar-webhooks run``. Then 20 endpoints (``acct_0`` .. ``acct_19``)
and N events, event i to ``acct_{i % 20}``, 1 KiB payloads, emitted through ``webhooks.emit`` in
transactions of 500. Deliveries/s is N over the time from the first COMMIT being sent to the last
request arriving at the receiver, so the producer's speed is part of it (the table shows how long
emitting took). The engine starts idle, as in production before a burst: the first commit wakes
it with a NOTIFY.

The HTTP limit is measured before the engine starts, on a quiet machine; the burst shares the two
cores between Postgres, the producer, the engine and the receiver, which is the point of the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import uvloop

from bench.harness import (
    BenchError,
    EngineProcess,
    ReceiverProcess,
    ReceiverStats,
    database,
    run_baseline,
    wait_until,
)
from bench.http_baseline import BaselineResult
from bench.payloads import EVENT_TYPE, payload_text
from bench.report import Row, render
from engine.migrate import migrate

ENDPOINTS = 20
BATCH = 500
BASELINE_CONCURRENCY = (16, 64)
DEFAULT_EVENTS = 10_000
DEFAULT_MAX_IN_FLIGHT = 8  # endpoints.max_in_flight's default: the headline figure
STALL_S = 60.0  # no new delivery for this long fails the run
ENGINE_READY_S = 60.0
POLL_S = 0.05
DB_TIMEOUT_S = 60.0
PROBE_PATH = "/probe"

EMIT = "SELECT webhooks.emit($1::text, $2::text, $3::jsonb)"
CREATE_ENDPOINT = "SELECT id FROM webhooks.create_endpoint($1::text, $2::text, $3::text[])"
SET_MAX_IN_FLIGHT = "SELECT 1 FROM webhooks.update_endpoint($1::uuid, p_max_in_flight => $2)"
# The receiver is on loopback over http; the engine refuses both by default (SSRF guard).
OPEN_POLICY = "UPDATE webhooks.settings SET allow_http = true, allow_private_networks = true"
ENGINE_WAITING = "SELECT waiting FROM webhooks.engine_state"
ENGINE_BUSY = "UPDATE webhooks.engine_state SET waiting = false"
LIVE_DELIVERIES = "SELECT count(*) FROM webhooks.deliveries"


@dataclass(frozen=True)
class BurstResult:
    """One burst. Times in seconds from the first COMMIT sent.

    ``seconds``: to the last request at the receiver (``deliveries_per_s`` = events / seconds);
    ``emit_seconds``: to the last COMMIT done; ``recorded_seconds``: until the hot table was seen
    empty, i.e. every result written (polled, so up to ``POLL_S`` late).
    """

    max_in_flight: int
    events: int
    deliveries_per_s: float
    seconds: float
    emit_seconds: float
    recorded_seconds: float
    duplicates: int


@dataclass(frozen=True)
class RunResult:
    """Everything one run measured; ``http_limit`` is the best baseline, the ratios' divisor."""

    postgres: str
    events: int
    baselines: list[BaselineResult]
    bursts: list[BurstResult]
    engine_exit_code: int
    wall_seconds: float

    @property
    def http_limit(self) -> float:
        return max(b.requests_per_s for b in self.baselines)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["http_limit"] = self.http_limit
        for burst in data["bursts"]:
            burst["ratio_to_http_limit"] = round(burst["deliveries_per_s"] / self.http_limit, 3)
        return data


def progress(message: str) -> None:
    """Progress goes to stderr, so stdout holds only the table (or the JSON)."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


async def run(
    *,
    server_url: str | None,
    events: int,
    baseline_requests: int,
    max_in_flight: Sequence[int],
    workdir: Path,
) -> RunResult:
    """One full run; see the module docstring. Everything started is stopped before returning.

    The processes' logs go to ``workdir``.
    """
    started = time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        progress("starting Postgres" + (" (embedded)" if server_url is None else ""))
        db = await stack.enter_async_context(database(server_url))
        conn = await asyncpg.connect(db.url, timeout=DB_TIMEOUT_S)
        stack.push_async_callback(conn.close)
        await migrate(conn)
        await conn.execute(OPEN_POLICY)
        receiver = await stack.enter_async_context(ReceiverProcess.running(workdir))
        baselines = []
        for concurrency in BASELINE_CONCURRENCY:
            progress(f"HTTP limit at concurrency {concurrency}")
            baselines.append(
                await run_baseline(
                    receiver.url(f"/baseline_c{concurrency}"),
                    concurrency=concurrency,
                    requests=baseline_requests,
                )
            )
        endpoint_ids = await _create_endpoints(conn, receiver)
        # The migration leaves waiting = true; clear it so that seeing it true means the
        # engine has run a claim cycle.
        await conn.execute(ENGINE_BUSY)
        progress("starting the engine")
        engine = await stack.enter_async_context(EngineProcess.running(db.url, workdir))
        await _wait_ready(conn, receiver, engine)
        bursts = []
        for limit in max_in_flight:
            for endpoint_id in endpoint_ids:
                await conn.execute(SET_MAX_IN_FLIGHT, endpoint_id, limit)
            progress(f"burst of {events:,} events, max_in_flight {limit}")
            bursts.append(await _burst(conn, receiver, engine, events, limit))
        progress("stopping the engine (SIGTERM)")
        exit_code = await engine.terminate()
    return RunResult(
        postgres=db.kind,
        events=events,
        baselines=baselines,
        bursts=bursts,
        engine_exit_code=exit_code,
        wall_seconds=round(time.monotonic() - started, 1),
    )


async def _create_endpoints(conn: asyncpg.Connection, receiver: ReceiverProcess) -> list[UUID]:
    """``acct_i`` -> ``/ep_i`` for the burst, plus ``acct_probe`` -> ``/probe`` for readiness."""
    ids: list[UUID] = []
    for i in range(ENDPOINTS):
        ids.append(
            await conn.fetchval(CREATE_ENDPOINT, f"acct_{i}", receiver.url(f"/ep_{i}"), ["*"])
        )
    await conn.fetchval(CREATE_ENDPOINT, "acct_probe", receiver.url(PROBE_PATH), ["*"])
    return ids


async def _wait_ready(
    conn: asyncpg.Connection, receiver: ReceiverProcess, engine: EngineProcess
) -> None:
    """Up means: it ran a claim cycle, delivered a probe event, and went idle again.

    The listener connects while the first claim runs, so after a probe's round trip the engine
    is listening and the burst's first commit wakes it by NOTIFY rather than by the 1 s poll.
    """

    async def waiting() -> bool:
        return bool(await conn.fetchval(ENGINE_WAITING))

    async def probed() -> bool:
        return (await receiver.stats()).per_path.get(PROBE_PATH, 0) > 0

    await wait_until(
        waiting, timeout_s=ENGINE_READY_S, what="the engine's first claim cycle", alive=engine
    )
    async with conn.transaction():
        await conn.execute(EMIT, "acct_probe", EVENT_TYPE, payload_text(0))
    await wait_until(
        probed, timeout_s=ENGINE_READY_S, what="the probe event's delivery", alive=engine
    )
    await wait_until(waiting, timeout_s=ENGINE_READY_S, what="the engine to go idle", alive=engine)


async def _burst(
    conn: asyncpg.Connection,
    receiver: ReceiverProcess,
    engine: EngineProcess,
    events: int,
    limit: int,
) -> BurstResult:
    """Emit ``events`` in transactions of BATCH and wait until the receiver has them all."""

    async def idle() -> bool:
        return await conn.fetchval(LIVE_DELIVERIES) == 0 and bool(
            await conn.fetchval(ENGINE_WAITING)
        )

    await wait_until(idle, timeout_s=STALL_S, what="the engine to go idle", alive=engine)
    await receiver.reset()
    rows = [(f"acct_{i % ENDPOINTS}", EVENT_TYPE, payload_text(i)) for i in range(events)]
    commits: list[float] = []  # time.time() as each COMMIT is sent; the last one when it is done

    async def emit() -> None:
        for start in range(0, events, BATCH):
            tx = conn.transaction()
            await tx.start()
            try:
                await conn.executemany(EMIT, rows[start : start + BATCH], timeout=DB_TIMEOUT_S)
            except BaseException:
                await tx.rollback()
                raise
            commits.append(time.time())
            await tx.commit()
        commits.append(time.time())

    emitter = asyncio.get_running_loop().create_task(emit(), name="emit")
    try:
        stats = await _wait_delivered(receiver, engine, emitter, events)
        await emitter
    finally:
        if not emitter.done():
            emitter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await emitter
    first_commit = commits[0]
    assert stats.last is not None
    seconds = stats.last - first_commit
    await wait_until(idle, timeout_s=STALL_S, what="every result to be recorded", alive=engine)
    recorded = time.time() - first_commit
    progress(
        f"delivered {events:,} in {seconds:.2f} s ({events / seconds:,.0f}/s), "
        f"{stats.duplicates} duplicates"
    )
    return BurstResult(
        max_in_flight=limit,
        events=events,
        deliveries_per_s=round(events / seconds, 1),
        seconds=round(seconds, 3),
        emit_seconds=round(commits[-1] - first_commit, 3),
        recorded_seconds=round(recorded, 3),
        duplicates=stats.duplicates,
    )


async def _wait_delivered(
    receiver: ReceiverProcess, engine: EngineProcess, emitter: asyncio.Task[None], events: int
) -> ReceiverStats:
    """Poll the receiver until ``events`` distinct deliveries arrived; BenchError on a stall."""
    seen, progressed = -1, time.monotonic()
    while True:
        stats = await receiver.stats()
        if stats.unique >= events:
            return stats
        if emitter.done() and emitter.exception() is not None:
            await emitter  # raises the producer's error
        engine.check_alive()
        now = time.monotonic()
        if stats.unique != seen:
            seen, progressed = stats.unique, now
        elif now - progressed > STALL_S:
            raise BenchError(
                f"deliveries stalled at {stats.unique:,}/{events:,} for {STALL_S:.0f} s; "
                f"engine log tail:\n{engine.log_tail()}"
            )
        await asyncio.sleep(POLL_S)


def table(result: RunResult) -> str:
    """The printed table: every rate also as a ratio to the HTTP limit of the same run."""
    limit = result.http_limit
    rows = [
        Row(
            f"HTTP limit, concurrency {b.concurrency}",
            b.requests_per_s,
            "requests/s",
            b.requests_per_s / limit,
        )
        for b in result.baselines
    ]
    for burst in result.bursts:
        rows += [
            Row(
                f"W1 burst, max_in_flight {burst.max_in_flight}",
                burst.deliveries_per_s,
                "deliveries/s",
                burst.deliveries_per_s / limit,
            ),
            Row("  duplicates", burst.duplicates, "deliveries", decimals=0),
            Row(f"  emitting {burst.events:,} events", burst.emit_seconds, "s", decimals=2),
            Row("  first commit to last receipt", burst.seconds, "s", decimals=2),
            Row("  first commit to all recorded", burst.recorded_seconds, "s", decimals=2),
        ]
    rows += [
        Row("engine exit code after SIGTERM", result.engine_exit_code, decimals=0),
        Row("total wall time", result.wall_seconds, "s"),
    ]
    title = (
        f"W1 burst: {result.events:,} events to {ENDPOINTS} endpoints, 1 KiB payloads, "
        f"transactions of {BATCH}, Postgres {result.postgres}"
    )
    return render(title, rows, ratio_label="/ HTTP limit")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.burst", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS, help="events to emit")
    parser.add_argument(
        "--baseline-requests", type=int, default=10_000, help="requests per HTTP baseline"
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        nargs="+",
        default=[DEFAULT_MAX_IN_FLIGHT],
        metavar="N",
        help="one burst per value, in order (default: 8, the endpoints' default)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    if args.events < 1 or args.baseline_requests < 1:
        parser.error("--events and --baseline-requests must be positive")
    if any(not 1 <= n <= 256 for n in args.max_in_flight):
        parser.error("--max-in-flight values must be 1..256")

    async def go(workdir: Path) -> RunResult:
        # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the children are stopped too.
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await run(
            server_url=os.environ.get("WEBHOOKS_DATABASE_URL") or None,
            events=args.events,
            baseline_requests=args.baseline_requests,
            max_in_flight=args.max_in_flight,
            workdir=workdir,
        )

    workdir = Path(tempfile.mkdtemp(prefix="misar-bench-"))
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(go(workdir))
    except BaseException as exc:
        if any(workdir.iterdir()):
            progress(f"logs kept in {workdir}")
        else:
            workdir.rmdir()
        if isinstance(exc, BenchError):
            print(f"bench: error: {exc}", file=sys.stderr)
            return 1
        if isinstance(exc, KeyboardInterrupt | asyncio.CancelledError):
            print("bench: interrupted; everything it started was stopped", file=sys.stderr)
            return 130
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result.as_json(), indent=2) if args.json else table(result))
    if result.engine_exit_code != 0:
        print(f"bench: error: engine exited {result.engine_exit_code} on SIGTERM", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
